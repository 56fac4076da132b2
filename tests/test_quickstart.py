"""The quickstart job end to end (small), and its CLI command."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wager.cli import app
from wager.config import RunConfig
from wager.data.schema import Categorical, MultiCategorical, Text
from wager.data.synthetic import SyntheticWorld, WorldConfig
from wager.quickstart import quickstart_config, run_quickstart


def small_config() -> RunConfig:
    """The shipped example, made small: fewer rows and users, 2 members, 2 epochs."""
    cfg = quickstart_config()
    assert cfg.ensemble is not None
    return replace(
        cfg,
        data=replace(cfg.data, synthetic_rows=20_000, synthetic_users=300),
        ensemble=replace(cfg.ensemble, members=2),
        training=replace(cfg.training, epochs=2),
    )


def test_quickstart_reads_the_shipped_example():
    # one home: the packaged TOML is the file examples/synthetic.toml points at
    repo_copy = Path(__file__).parents[1] / "examples" / "synthetic.toml"
    assert quickstart_config() == RunConfig.load(repo_copy)
    assert quickstart_config().data.format == "synthetic"


def test_quickstart_small_end_to_end(tmp_path):
    result = run_quickstart(tmp_path / "run", small_config(), n_show_users=2, k=3, oov_rows=300)
    m = result["metrics"]
    assert 0.5 < m["auc"] <= 1.0
    assert m["log_loss"] < m["log_loss_base_rate"] + 0.01
    assert 0.0 <= m["coverage_true_ctr@0.9"] <= 1.0
    assert m["width@0.9"] > 0
    # the OOV std ratio of every categorical field of the world's schema (ids, context too)
    schema = SyntheticWorld(WorldConfig(n_users=10)).schema()
    expected = {f"user.{schema.user}", f"item.{schema.item}"} | {
        f"{side}.{f.name}"
        for side, feats in (
            ("user", schema.user_features),
            ("item", schema.item_features),
            ("context", schema.context),
        )
        for f in feats
        if isinstance(f, Categorical | MultiCategorical | Text)
    }
    assert set(result["oov_std_ratio"]) == expected
    assert all(r > 0 for r in result["oov_std_ratio"].values())
    assert len(result["recommendations"]) == 2 * 3
    for r in result["recommendations"]:
        assert r["low"] <= r["mean"] <= r["high"]
        assert r["inside"] == (r["low"] <= r["true_ctr"] <= r["high"])
    for name in ("config.toml", "weights.safetensors", "metrics.json"):
        assert name in result["files"]
        assert (tmp_path / "run" / name).exists()
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["auc"] == m["auc"]
    assert saved["oov_std_ratio"] == result["oov_std_ratio"]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (replace(quickstart_config(), ensemble=None), "[ensemble] is missing"),
        (
            replace(quickstart_config(), data=replace(quickstart_config().data, format="table")),
            '[data] format = "table" is invalid for the quickstart',
        ),
    ],
)
def test_quickstart_refuses_what_it_cannot_report(tmp_path, config, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        run_quickstart(tmp_path / "run", config)
    assert not (tmp_path / "run").exists()


def test_quickstart_cli_bad_flag(tmp_path):
    bad = CliRunner().invoke(app, ["quickstart", "--members", "1", "--out", str(tmp_path)])
    assert bad.exit_code != 0
    assert "members" in bad.output
