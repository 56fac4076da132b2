"""`wager calibrate`: refit a run's post-hoc chain on new calibration rows, no retraining."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from conftest import rating_toml
from wager.cli import app
from wager.config import RunConfig
from wager.pipeline import load_run_data
from wager.recommender import Recommender
from wager.runs import RunDirectory


def _ratings() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = [
        (f"u{u}", f"i{i}", int(rng.integers(1, 6)))
        for u in range(40)
        for i in rng.choice(30, 8, replace=False)
    ]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "rating"])
    df["ts"] = rng.permutation(len(df))
    return df


def _invoke(*args: str | Path):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture()
def run(tmp_path: Path) -> Path:
    _ratings().to_csv(tmp_path / "r.csv", index=False)
    (tmp_path / "c.toml").write_text(
        rating_toml(
            tmp_path / "r.csv",
            valid_fraction=0.2,
            schema_extra='timestamp = "ts"\n',
            extra='[uncertainty]\nconformal = "homoscedastic"\n',
        )
    )
    out = tmp_path / "run"
    result = _invoke("train", tmp_path / "c.toml", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    return out


def test_calibrate_refits_conformal_on_the_other_splits_validation_rows(run):
    before = Recommender.load(run)
    weights = {k: v.clone() for k, v in before.scorer_.stack.state_dict().items()}
    q_before = before.chain_.conformal.score_quantile(0.9)
    result = _invoke("calibrate", run, "--split", "temporal", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["chain"] == "conformal" and payload["split"] == "temporal"
    after = Recommender.load(run)  # the replaced run verifies and loads
    # the weights are untouched: calibration is not retraining
    for k, v in after.scorer_.stack.state_dict().items():
        torch.testing.assert_close(v, weights[k])
    # the conformal quantile, worked out by hand on the temporal split's validation rows:
    # the ceil((n + 1) * 0.9)-th smallest |rating - mean| of the model's raw predictions
    valid = load_run_data(RunConfig.load(run / "config.toml"), None, "temporal").valid
    assert valid is not None and payload["calibration_rows"] == len(valid)
    raw = before.scorer_.prediction(valid["user_id"].to_numpy(), valid["item_id"].to_numpy())[0]
    scores = np.sort(np.abs(valid["rating"].to_numpy(dtype=float) - raw.mean.numpy()))
    k = math.ceil((len(scores) + 1) * 0.9)
    q = after.chain_.conformal.score_quantile(0.9)
    assert q == pytest.approx(float(scores[k - 1]), rel=1e-6)
    assert q != pytest.approx(q_before)  # other rows, another quantile
    assert after.metrics_["calibrated_on"]["split"] == "temporal"
    assert RunDirectory(run).verify()


def test_calibrate_without_validation_rows_says_how_to_fix(run):
    cfg = (run / "config.toml").read_text().replace("valid_fraction = 0.2", "valid_fraction = 0.0")
    # a hand-edited run is refused by its manifest, before any work
    (run / "config.toml").write_text(cfg)
    result = _invoke("calibrate", run, "--json")
    assert result.exit_code == 1
    assert (
        "corrupt (checksum differs): config.toml" in json.loads(result.stdout)["error"]["message"]
    )


def test_calibrate_a_missing_run_is_one_line(tmp_path):
    result = _invoke("calibrate", tmp_path / "nope")
    assert result.exit_code == 1 and "run folder not found" in result.output
    assert "Traceback" not in result.output
