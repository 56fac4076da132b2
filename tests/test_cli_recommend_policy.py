"""``wager recommend --policy``: a policy picks the k items from the run's candidates and the
propensity column reaches the table and ``--json``; bad policy flags name the flag.

One tiny two-member ``biased_mf`` rating run is trained once per module; the references
come from the same run loaded with ``Recommender.load`` and its ``predict``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner, Result

from conftest import rating_toml
from wager.cli import app
from wager.recommender import Recommender

N_ITEMS = 12


def _invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def _plain(text: str) -> str:
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli_recommend_policy")
    rng = np.random.default_rng(0)
    items = [f"i{i}" for i in range(N_ITEMS)]
    rows = [
        (f"u{u}", i, int(rng.integers(1, 6)))
        for u in range(30)
        for i in rng.choice(items, size=5, replace=False)
    ]
    pd.DataFrame(rows, columns=["user_id", "item_id", "rating"]).to_csv(
        d / "ratings.csv", index=False
    )
    (d / "run.toml").write_text(rating_toml(d / "ratings.csv", extra="[ensemble]\nmembers = 2\n"))
    result = _invoke("train", d / "run.toml", "--out", d / "run", "--json")
    assert result.exit_code == 0, result.output
    return d / "run"


def _json(run: Path, *flags: str) -> dict:
    result = _invoke("recommend", run, "--user", "u1", "--include-seen", "--json", *flags)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_ucb_picks_by_mean_plus_beta_std_with_propensity_one(run):
    payload = _json(run, "-k", "4", "--policy", "ucb", "--beta", "1.0")
    recs = pd.DataFrame(payload["recommendations"])
    rec = Recommender.load(run)
    items = np.asarray(rec.scorer_.catalogue.items, dtype=object)
    pred = rec.predict(["u1"] * len(items), items)
    assert pred.std is not None
    ucb = (pred.mean + pred.std).numpy()
    assert recs["item"].tolist() == items[np.argsort(-ucb, kind="stable")[:4]].tolist()
    assert recs["propensity"].tolist() == [1.0] * 4 and recs["rank"].tolist() == [1, 2, 3, 4]
    assert payload["policy"] == {
        "name": "ucb(beta=1.0)",
        "propensity_floor": 1e-6,
        "draws": None,
        "candidates": 100,
    }


def test_epsilon_greedy_is_seeded_and_its_propensities_are_the_closed_form(run):
    flags = ("-k", "3", "--policy", "epsilon_greedy", "--epsilon", "0.5", "--seed", "3")
    a, b = _json(run, *flags), _json(run, *flags)
    assert a["recommendations"] == b["recommendations"]
    props = [r["propensity"] for r in a["recommendations"]]
    # 12 candidates: position j has 12 - j left; best 0.5 + 0.5 / left, others 0.5 / left
    for j, p in enumerate(props):
        left = N_ITEMS - j
        assert p == pytest.approx(0.5 + 0.5 / left) or p == pytest.approx(0.5 / left)


def test_ucb_with_an_epsilon_floor_logs_its_exact_propensities(run):
    flags = ("-k", "3", "--policy", "ucb", "--beta", "1", "--epsilon", "0.2", "--seed", "4")
    a, b = _json(run, *flags), _json(run, *flags)
    assert a["recommendations"] == b["recommendations"]
    assert a["policy"]["name"] == "ucb(beta=1.0, epsilon=0.2)"
    # position j has N_ITEMS - j left: the UCB pick 0.8 + 0.2 / left, the others 0.2 / left
    for j, r in enumerate(a["recommendations"]):
        left = N_ITEMS - j
        assert r["propensity"] == pytest.approx(0.8 + 0.2 / left) or r[
            "propensity"
        ] == pytest.approx(0.2 / left)


def test_the_table_prints_the_propensity_column_and_the_policy(run):
    result = _invoke(
        "recommend", run, "--user", "u1", "--include-seen", "-k", "2", "--policy", "thompson",
        "--seed", "0",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = _plain(result.stdout)
    assert "propen" in text  # the header (cut to the terminal's width)
    flags = ("-k", "2", "--policy", "thompson", "--seed", "0")
    for r in _json(run, *flags)["recommendations"]:  # same seed: the same slate
        assert f"│ {r['rank']} │ {r['item']} │" in text and f"│ {r['propensity']:.4g} │" in text
    assert (
        "policy thompson(draws=1000) over 100 candidates per user: propensities Monte Carlo "
        "over 1000 draws, floored at 1e-06" in text
    )


def test_without_policy_there_is_no_propensity_column(run):
    payload = _json(run, "-k", "2")
    assert "propensity" not in payload["recommendations"][0] and "policy" not in payload


@pytest.mark.parametrize(
    ("flags", "flag", "message"),
    [
        (["--beta", "1"], "--beta", "--beta applies only with --policy"),
        (["--seed", "1"], "--seed", "--seed applies only with --policy"),
        (
            ["--policy", "bandit"],
            "--policy",
            "--policy 'bandit' is unknown; choose one of greedy, epsilon_greedy, ucb, thompson, "
            "softmax",
        ),
        (["--policy", "ucb"], "--beta", "--policy ucb needs --beta"),
        (
            ["--policy", "ucb", "--beta", "1", "--temperature", "0.1"],
            "--temperature",
            "--temperature does not apply to --policy ucb",
        ),
        (
            ["--policy", "ucb", "--beta", "1", "--epsilon", "2"],
            "--epsilon",
            "--epsilon must be a finite number in [0, 1]",
        ),
        (["--policy", "ucb", "--beta", "-1"], "--beta", "--beta must be a finite number >= 0"),
        (
            ["--policy", "softmax", "--temperature", "0"],
            "--temperature",
            "--temperature must be a finite number > 0",
        ),
        (
            ["--policy", "epsilon_greedy", "--epsilon", "2"],
            "--epsilon",
            "--epsilon must be a finite number in [0, 1]",
        ),
    ],
)
def test_bad_policy_flags_name_the_flag(run, flags, flag, message):
    result = _invoke("recommend", run, "--user", "u1", *flags, "--json")
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout)["error"]
    assert error["flag"] == flag and message in error["message"], error
