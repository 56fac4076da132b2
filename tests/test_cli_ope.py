"""``wager ope`` and the pipeline functions behind it, on tiny Open Bandit directories."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner, Result

from wager.cli import app
from wager.config import EnsembleConfig, ModelConfig, RunConfig, TrainConfig
from wager.data.loaders.obd import load_obd, load_obd_feedback
from wager.pipeline import fit_reward_draws, reward_model_config, wager_policy_distribution
from wager.policies import UCB, SoftmaxPolicy
from wager.recommender import Recommender

N_ITEMS, N_ROWS = 3, 90
ITEMS = (
    ",item_id,item_feature_0,item_feature_1,item_feature_2,item_feature_3\n"
    "0,0,-0.5,x,y,z\n1,1,0.25,x,w,z\n2,2,0.5,v,w,z\n"
)


def _write(root: Path, seed: int, uniform: bool) -> Path:
    """A policy directory: N_ROWS impressions over 3 positions, clicks from item & position."""
    g = np.random.default_rng(seed)
    position = np.tile([1, 2, 3], N_ROWS // 3)
    if uniform:
        item = g.integers(0, N_ITEMS, N_ROWS)
        prop = np.full(N_ROWS, 1 / N_ITEMS)
    else:  # a drifting policy: item 0 more likely; propensities vary by row
        item = g.choice(N_ITEMS, N_ROWS, p=[0.6, 0.3, 0.1])
        prop = np.array([0.6, 0.3, 0.1])[item] * g.uniform(0.8, 1.0, N_ROWS)
    click = (g.random(N_ROWS) < np.array([0.5, 0.2, 0.1])[item]).astype(int)
    lines = [
        ",timestamp,item_id,position,click,propensity_score,user_feature_0,user_feature_1,"
        "user_feature_2,user_feature_3,user-item_affinity_0"
    ]
    for i in range(N_ROWS):
        lines.append(
            f"{i},2019-11-24 00:{i // 60:02d}:{i % 60:02d}+00:00,{item[i]},{position[i]},"
            f"{click[i]},{float(prop[i])!r},u{i % 4},b,c,d,{float(i % 3)}"
        )
    root.mkdir(parents=True)
    (root / "men.csv").write_text("\n".join(lines) + "\n")
    (root / "item_context.csv").write_text(ITEMS)
    return root


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("obd")
    return _write(d / "random", 0, uniform=True), _write(d / "bts", 1, uniform=False)


def _invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def test_ope_json_table_and_plot(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    random, bts = dirs
    common = ("--members", "2", "--folds", "2", "--bootstrap", "100")
    result = _invoke(
        "ope", "--logs", random, "--policy-logs", bts, *common, "--json", "--out", tmp_path
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    # the independent reference: the bts log's empirical frequency per (item, position),
    # reweighting the random log's clicks by frequency / (1/3)
    r = pd.read_csv(random / "men.csv")
    b = pd.read_csv(bts / "men.csv")
    freq = b.groupby(["item_id", "position"]).size() / b.groupby("position").size()
    w = freq.reindex(list(zip(r["item_id"], r["position"], strict=True))).fillna(0).to_numpy() * 3
    assert out["estimates"]["ips"]["value"] == pytest.approx(np.mean(w * r["click"]), rel=1e-9)
    assert out["estimates"]["snips"]["value"] == pytest.approx(
        np.sum(w * r["click"]) / np.sum(w), rel=1e-9
    )
    assert out["on_policy"] == pytest.approx(b["click"].mean())
    assert out["confidence_level"] == 0.95 and out["interval"] == "bca"
    for key in ("ips", "snips", "dm", "dr", "switch_dr", "replay"):
        e = out["estimates"][key]
        assert e["low"] <= e["value"] <= e["high"] and e["ess"] > 0, key
    assert (tmp_path / "ope.png").read_bytes()[:4] == b"\x89PNG"
    assert (
        json.loads((tmp_path / "ope.json").read_text())["estimates"].keys()
        == out["estimates"].keys()
    )
    table = _invoke("ope", "--logs", random, "--policy-logs", bts, *common)
    assert table.exit_code == 0, table.output
    assert "switch_dr" in table.stdout and "on-policy value" in table.stdout


def test_ope_flag_errors(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    random, bts = dirs
    both = _invoke("ope", "--logs", random, "--policy-logs", bts, "--policy", "ucb")
    assert both.exit_code == 2 and "exactly one of --policy-logs or --policy" in both.output
    fmt = _invoke("ope", "--logs", random, "--policy-logs", bts, "--format", "csv")
    assert fmt.exit_code == 2 and "--format 'csv' is not supported" in fmt.output
    missing = _invoke("ope", "--logs", tmp_path / "nope", "--policy-logs", bts)
    assert missing.exit_code == 2 and "--logs" in missing.output
    no_run = _invoke("ope", "--logs", random, "--policy", "greedy")
    assert no_run.exit_code == 2 and "--policy needs --run" in no_run.output
    base = ("ope", "--logs", random, "--policy-logs", bts)
    folds = _invoke(*base, "--folds", "1")
    assert folds.exit_code == 2 and "--folds 1 must be >= 2" in folds.output
    members = _invoke(*base, "--members", "1")
    assert members.exit_code == 2 and "--members 1 must be >= 2: the reward model" in members.output
    level = _invoke(*base, "--confidence-level", "1.5")
    assert level.exit_code == 2 and "--confidence-level 1.5 must be in (0, 1)" in level.output
    interval = _invoke(*base, "--interval", "normal")
    assert interval.exit_code == 2
    assert "--interval 'normal': use bca or percentile" in interval.output
    # checked before any log is read: an earlier ope.json is never replaced silently
    out = tmp_path / "earlier"
    out.mkdir()
    (out / "ope.json").write_text("mine")
    taken = _invoke(*base, "--out", out)
    assert taken.exit_code == 2 and "already holds ope.json: pass --overwrite" in taken.output
    assert (out / "ope.json").read_text() == "mine"
    file_out = tmp_path / "file"
    file_out.write_text("x")
    not_dir = _invoke(*base, "--out", file_out)
    assert not_dir.exit_code == 2 and "is a file" in not_dir.output


def test_reward_draws_are_cross_fitted_members(dirs: tuple[Path, Path]) -> None:
    torch.manual_seed(0)
    log = load_obd_feedback(dirs[0])
    draws = fit_reward_draws(log, folds=2, config=reward_model_config(log, members=3))
    assert draws.shape == (3, N_ROWS, N_ITEMS, 3)
    assert ((draws > 0) & (draws < 1)).all()
    assert draws.std(axis=0).mean() > 0  # members disagree
    with pytest.raises(ValueError, match=r"folds=1 must be between 2 and the log's 90 rows"):
        fit_reward_draws(log, folds=1)


def _obd_run(root: Path, members: int = 0) -> Recommender:
    ds = load_obd(root)
    cfg = RunConfig(
        schema=ds.schema,
        model=ModelConfig(type="factorization", dim=2),
        training=TrainConfig(epochs=1, batch_size=32),
        ensemble=EnsembleConfig(members=members) if members else None,
    )
    return Recommender(cfg).fit(
        ds.interactions, user_features=ds.user_features, item_features=ds.item_features
    )


def test_wager_policy_distribution_follows_the_protocol(dirs: tuple[Path, Path]) -> None:
    log = load_obd_feedback(dirs[0])
    rec = _obd_run(dirs[1])
    dist = wager_policy_distribution(rec, log, SoftmaxPolicy(temperature=0.1), batch_rows=7)
    assert dist.shape == (N_ROWS, N_ITEMS, 3)
    # reference: predict row 5's three items with its context, position written 1-based;
    # the softmax policy's position-1 marginal is softmax(mean / T) exactly
    assert log.context is not None and log.user_ids is not None
    ctx = pd.concat([log.context.iloc[[5]]] * N_ITEMS, ignore_index=True)
    ctx["position"] = int(log.position[5]) + 1
    mean = rec.predict([log.user_ids[5]] * N_ITEMS, ["0", "1", "2"], ctx).mean.double()
    np.testing.assert_allclose(dist[5, :, 0], torch.softmax(mean / 0.1, dim=0).numpy(), rtol=1e-5)
    # each position's marginal sums to 1 over the items; 3 positions of 3 items show each
    # item exactly once, so each item's marginals sum to 1 over the positions up to the
    # Monte Carlo error of positions 2-3 (1000 slates: sd <= 0.016 per marginal)
    np.testing.assert_allclose(dist.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(dist.sum(axis=2), 1.0, atol=0.1)


def test_cli_policy_evaluates_a_wager_policy_on_a_run(
    dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    rec = _obd_run(dirs[1], members=2)
    rec.save(tmp_path / "run")
    args = ("--members", "2", "--folds", "2", "--bootstrap", "50", "--json")
    result = _invoke(
        "ope", "--logs", dirs[0], "--policy", "ucb", "--beta", "1", "--run", tmp_path / "run",
        "--out", tmp_path / "ope", *args,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["on_policy"] is None and "dr" in out["estimates"]
    assert (tmp_path / "ope" / "ope.png").stat().st_size > 0  # no on-policy line to draw
    # reference: IPS of UCB(beta=1) on the saved run, from the library functions
    log = load_obd_feedback(dirs[0])
    dist = wager_policy_distribution(Recommender.load(tmp_path / "run"), log, UCB(beta=1.0))
    w = dist[np.arange(N_ROWS), log.action, log.position] / log.propensity
    assert out["estimates"]["ips"]["value"] == pytest.approx(np.mean(w * log.reward))


def test_cli_policy_names_a_bad_policy(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    _obd_run(dirs[1]).save(tmp_path / "run")
    result = _invoke(
        "ope", "--logs", dirs[0], "--policy", "ucb", "--run", tmp_path / "run", "--json"
    )
    assert result.exit_code != 0
    assert "policy 'ucb' needs beta" in result.output
