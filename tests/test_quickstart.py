"""The quickstart job end to end (small), through the CLI with --json."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from wager.cli import app
from wager.quickstart import QuickstartConfig, run_quickstart


def test_quickstart_small_end_to_end(tmp_path):
    cfg = QuickstartConfig(n_users=300, n_log=30_000, members=2, k=3, n_show_users=2)
    result = run_quickstart(cfg, tmp_path / "run")
    m = result["metrics"]
    assert 0.5 < m["auc"] <= 1.0
    assert m["log_loss"] < m["log_loss_base_rate"] + 0.01
    assert 0.0 <= m["coverage_true_ctr@0.9"] <= 1.0
    assert len(result["recommendations"]) == 2 * 3
    for name in ("config", "weights", "encoders", "metrics"):
        assert (tmp_path / "run").joinpath(result["files"][name].split("/")[-1]).exists()
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["auc"] == m["auc"]


def test_quickstart_cli_json_and_bad_flag(tmp_path):
    runner = CliRunner()
    bad = runner.invoke(app, ["quickstart", "--members", "1", "--out", str(tmp_path)])
    assert bad.exit_code != 0
    assert "members" in bad.output
