"""Experiments: the config and its errors, sticky hashed assignment (by hand and in
distribution), the user-level delta-method test, and ``wager abtest report`` on a real
SQLite event store with counts worked out by hand."""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from wager.cli import app
from wager.evaluation.abtest import compare_ratio_delta, compare_two_proportions
from wager.serving.events import FeedbackEvent, Impression
from wager.serving.experiments import Experiment, abtest_report
from wager.serving.store import EventStore

CONFIG = """
[experiment]
name = "exp1"
salt = "s1"
[[experiment.arms]]
name = "control"
share = 0.7
policy = "greedy"
[[experiment.arms]]
name = "ucb"
share = 0.3
policy = "ucb"
beta = 1.0
model_version = "v2"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(text)
    return path


def test_config_and_sticky_assignment_by_hand(tmp_path: Path) -> None:
    exp = Experiment.load(_write(tmp_path, CONFIG))
    assert [a.name for a in exp.arms] == ["control", "ucb"]
    assert exp.arms[1].params == {"beta": 1.0} and exp.arms[1].model_version == "v2"
    for user in ("42", "alice", "u-7"):
        u = int.from_bytes(hashlib.sha256(f"s1:{user}".encode()).digest()[:8], "big") / 2**64
        assert exp.assign(user).name == ("control" if u < 0.7 else "ucb")
        assert exp.assign(user) == exp.assign(user)
    assert exp.label(exp.arms[1]) == "exp1/ucb"
    share = np.mean([exp.assign(str(i)).name == "ucb" for i in range(20000)])
    assert abs(share - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 20000)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("share = 0.3", "share = 0.2"), r"shares must sum to 1, got 0.9 \(control=0.7, ucb=0.2\)"),
        (('name = "ucb"', 'name = "control"'), "arm names must be unique"),
        (("beta = 1.0", "gamma = 1.0"), r"arm 2: unknown keys \['gamma'\]"),
        (("beta = 1.0", ""), r"arm 2 \(ucb\): policy 'ucb' needs beta"),
        (('policy = "greedy"', 'policy = "best"'), r"arm 1 \(control\): unknown policy 'best'"),
        (('name = "exp1"', 'name = "a b"'), "name must be letters, digits"),
    ],
)
def test_config_errors_name_the_arm_and_key(tmp_path: Path, edit, message: str) -> None:
    path = _write(tmp_path, CONFIG.replace(*edit, 1))
    with pytest.raises(ValueError, match=message) as info:
        Experiment.load(path)
    assert str(path) in str(info.value)


def test_delta_method_with_one_impression_per_user_is_the_binomial_variance() -> None:
    rng = np.random.default_rng(0)
    ca, cb = rng.random(400) < 0.1, rng.random(500) < 0.15
    r = compare_ratio_delta((ca, np.ones(400)), (cb, np.ones(500)))
    pa, pb = ca.mean(), cb.mean()
    se = math.sqrt(pa * (1 - pa) / 399 + pb * (1 - pb) / 499)  # ddof 1 variances / k
    assert r["difference"] == pytest.approx(pb - pa)
    assert r["z"] == pytest.approx((pb - pa) / se)
    assert (r["users_control"], r["users_treatment"]) == (400, 500)


def test_delta_method_widens_for_correlated_impressions() -> None:
    # each user clicks all or none of their 10 impressions: 10x fewer independent units
    rng = np.random.default_rng(1)
    ca, cb = (rng.random(300) < 0.1) * 10, (rng.random(300) < 0.14) * 10
    n = np.full(300, 10)
    users = compare_ratio_delta((ca, n), (cb, n))
    flat = compare_two_proportions((int(ca.sum()), 3000), (int(cb.sum()), 3000))
    assert users["difference"] == pytest.approx(flat.difference)
    width_users, width_flat = users["high"] - users["low"], flat.high - flat.low
    assert width_users / width_flat == pytest.approx(math.sqrt(10 * 300 / 299), rel=0.02)


def _store_with_experiment(path: Path) -> EventStore:
    """control: users a, b (3 + 1 impressions, 2 clicks); ucb: users c, d, e (1 each, 2
    clicks); one impression of another experiment."""
    store = EventStore.sqlite(path)
    rows = [
        ("r1", "a", "i1", "exp1/control"), ("r1", "a", "i2", "exp1/control"),
        ("r2", "a", "i3", "exp1/control"), ("r3", "b", "i1", "exp1/control"),
        ("r4", "c", "i1", "exp1/ucb"), ("r5", "d", "i1", "exp1/ucb"),
        ("r6", "e", "i2", "exp1/ucb"), ("r7", "f", "i1", "other/x"),
    ]  # fmt: skip
    store.log_impressions(
        [
            Impression(r, u, i, 1, 0.1, 0.1, 0.01, "greedy", 1.0, arm, "v1", 0.0)
            for r, u, i, arm in rows
        ]
    )
    clicks = [("e1", "r1", "i2"), ("e2", "r3", "i1"), ("e3", "r4", "i1"), ("e4", "r6", "i2")]
    store.add_feedback([FeedbackEvent(e, r, i, 1, None, 1.0) for e, r, i in clicks])
    return store


def test_report_counts_by_hand_on_a_real_store(tmp_path: Path) -> None:
    with _store_with_experiment(tmp_path / "events.db") as store:
        report = abtest_report(
            store.served_with_feedback(), "exp1", shares={"control": 0.5, "ucb": 0.5}
        )
    arms = report["arms"]
    assert (
        arms["control"]["users"],
        arms["control"]["impressions"],
        arms["control"]["clicks"],
    ) == (2, 4, 2)
    assert (arms["ucb"]["users"], arms["ucb"]["impressions"], arms["ucb"]["clicks"]) == (3, 3, 2)
    imp = report["comparisons"]["ucb"]["impression_level"]
    ref = compare_two_proportions((2, 4), (2, 3))
    assert imp["p_value"] == pytest.approx(ref.p_value) and imp["difference"] == pytest.approx(
        2 / 3 - 0.5
    )
    srm = report["sample_ratio"]
    assert srm["chi2"] == pytest.approx(2 * 0.5**2 / 2.5)  # users 2 vs 3, expected 2.5 each
    with pytest.raises(
        ValueError, match=r"no impression of experiment 'nope'.*\['exp1', 'other'\]"
    ):
        abtest_report(_frame(tmp_path), "nope")


def _frame(tmp_path: Path):
    with EventStore.sqlite(tmp_path / "events.db") as store:
        return store.served_with_feedback()


def test_cli_report_json_and_errors(tmp_path: Path) -> None:
    _store_with_experiment(tmp_path / "events.db").close()
    db = f"sqlite:///{tmp_path / 'events.db'}"
    config = _write(tmp_path, CONFIG.replace("0.7", "0.5").replace("0.3", "0.5"))
    r = CliRunner().invoke(
        app,
        ["abtest", "report", "--db", db, "--experiment", "exp1", "--config", str(config), "--json"],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["control"] == "control" and out["arms"]["ucb"]["clicks"] == 2
    assert out["sample_ratio"]["mismatch"] is False
    text = CliRunner().invoke(app, ["abtest", "report", "--db", db, "--experiment", "exp1"])
    assert text.exit_code == 0 and "sample ratio: not checked" in text.output
    bad = CliRunner().invoke(
        app, ["abtest", "report", "--db", db, "--experiment", "other", "--config", str(config)]
    )
    assert bad.exit_code == 2 and "is experiment 'exp1', not 'other'" in bad.output
    lvl = CliRunner().invoke(
        app, ["abtest", "report", "--db", db, "--experiment", "exp1", "--level", "2"]
    )
    assert lvl.exit_code == 2 and "--level must be in (0, 1)" in lvl.output


def test_cli_report_reads_only(tmp_path: Path) -> None:
    """A mistyped --db is refused and no database file appears; a database without a wager
    store is refused, not given one (the report only reads)."""
    missing = tmp_path / "evnets.db"
    r = CliRunner().invoke(
        app, ["abtest", "report", "--db", f"sqlite:///{missing}", "--experiment", "exp1"]
    )
    assert r.exit_code == 2 and "no such SQLite database file" in r.output
    assert not missing.exists()
    url = CliRunner().invoke(app, ["abtest", "report", "--db", "events.db", "--experiment", "e"])
    assert url.exit_code == 2 and "not an event-store URL" in url.output
    other = tmp_path / "other.db"
    sqlite3.connect(other).close()  # an empty SQLite file that no wager wrote
    foreign = CliRunner().invoke(
        app, ["abtest", "report", "--db", f"sqlite:///{other}", "--experiment", "exp1"]
    )
    assert foreign.exit_code != 0 and "holds no wager event store" in foreign.output
    with sqlite3.connect(other) as conn:
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []


# ----------------------------------------------------------------------------- in the service

SERVED = """
[experiment]
name = "ab"
salt = "x"
[[experiment.arms]]
name = "control"
share = 0.5
policy = "greedy"
model_version = "v1"
[[experiment.arms]]
name = "ucb"
share = 0.5
policy = "ucb"
beta = 1.0
"""


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from serving.tiny_runs import train_registry

    return train_registry(tmp_path_factory.mktemp("exp"), ("v1", "v2"))


def test_the_service_serves_each_user_their_arm(registry_dir: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from wager.serving.app import create_app
    from wager.serving.registry import ModelRegistry

    exp = Experiment.load(_write(tmp_path, SERVED))
    users = [f"u{i}" for i in range(30)] + ["new-1", "new-2"]
    with EventStore.sqlite(tmp_path / "events.db") as store:
        client = TestClient(create_app(ModelRegistry(registry_dir), store, None, experiment=exp))
        for user in users:
            # the request's own policy is ignored inside an experiment
            r = client.post("/v1/recommend", json={"user_id": user, "k": 3, "policy": "thompson"})
            assert r.status_code == 200, r.text
            out, arm = r.json(), exp.assign(user)
            assert out["arm"] == f"ab/{arm.name}"
            assert out["model_version"] == ("v1" if arm.name == "control" else "v2")
            assert out["policy"] == ("greedy" if arm.name == "control" else "ucb(beta=1.0)")
            if arm.name == "ucb":
                for item in out["items"]:
                    assert item["score"] == pytest.approx(item["mean"] + item["std"])
        report = abtest_report(
            store.served_with_feedback(), "ab", shares={"control": 0.5, "ucb": 0.5}
        )
    expected = {name: sum(exp.assign(u).name == name for u in users) for name in ("control", "ucb")}
    assert {n: a["users"] for n, a in report["arms"].items()} == expected
    assert {n: a["impressions"] for n, a in report["arms"].items()} == {
        n: 3 * c for n, c in expected.items()
    }


def test_an_arm_pinned_to_a_missing_version_fails_before_serving(
    registry_dir: Path, tmp_path: Path
) -> None:
    from wager.serving.app import create_app
    from wager.serving.registry import ModelRegistry

    exp = Experiment.load(_write(tmp_path, SERVED.replace('"v1"', '"v9"')))
    missing = pytest.raises(ValueError, match=r"model version 'v9' is not a version.*v1, v2")
    with EventStore.sqlite(tmp_path / "events.db") as store, missing:
        create_app(ModelRegistry(registry_dir), store, None, experiment=exp)
    bad = _write(tmp_path, SERVED.replace("0.5", "0.6", 1))
    r = CliRunner().invoke(app, ["serve", str(registry_dir), "--experiment", str(bad)])
    assert r.exit_code == 2 and "--experiment:" in r.output and "shares must sum to 1" in r.output
