"""``wager tune``: the [search] section's reading and checks, and a small search end to end.

The objective is checked against an independent refit: the best trial's value equals the
validation metric of the best config fitted again on the same rows (same seed), and differs
from its test metric (the test rows are never the objective)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import wager.cli
from conftest import rating_toml
from wager.config import ConfigError, RunConfig
from wager.pipeline import load_run_data
from wager.recommender import Recommender
from wager.tuning import Dimension, SearchConfig

pytest.importorskip("optuna")

SEARCH = """
[search]
"model.dim" = [2, 16]
"training.learning_rate" = [1e-3, 1e-1]
"training.optimizer" = ["adam", "adamw"]
"""


def _ratings() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    ub, ib = rng.normal(0, 1, 60), rng.normal(0, 1, 30)
    rows = [
        (f"u{u}", f"i{i}", int(np.clip(np.rint(3 + ub[u] + ib[i] + rng.normal(0, 0.5)), 1, 5)))
        for u in range(60)
        for i in rng.choice(30, size=10, replace=False)
    ]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating"])


def _write(tmp_path: Path, search: str = SEARCH) -> Path:
    data = tmp_path / "ratings.csv"
    if not data.exists():
        _ratings().to_csv(data, index=False)
    path = tmp_path / "search.toml"
    path.write_text(rating_toml(data, epochs=3) + search)
    return path


# ----------------------------------------------------------------------------- the space


def test_ranges_choices_and_the_log_scale_rule(tmp_path: Path) -> None:
    search = SearchConfig.load(_write(tmp_path, SEARCH + """
"training.weight_decay" = {low = 0.0, high = 0.1}
"training.batch_size" = {choices = [32, 64]}
"training.epochs" = {low = 2, high = 30, log = false}
"""))  # fmt: skip
    dims = {d.key: d for d in search.dimensions}
    assert dims["model.dim"] == Dimension("model.dim", "int", 2, 16, log=False)  # 8x: linear
    assert dims["training.learning_rate"] == Dimension("training.learning_rate", "float",
                                                       1e-3, 1e-1, log=True)  # fmt: skip
    assert dims["training.optimizer"].choices == ("adam", "adamw")
    assert dims["training.weight_decay"].log is False  # low 0: never log
    assert dims["training.batch_size"] == Dimension("training.batch_size", "choice",
                                                    choices=(32, 64))  # fmt: skip
    assert dims["training.epochs"].log is False  # 15x, but log = false given
    assert "search" not in search.base
    cfg = search.config({"model.dim": 7, "training.optimizer": "adamw"})
    assert cfg.model.dim == 7 and cfg.training.optimizer == "adamw"
    assert cfg.training.epochs == 3  # the rest as in the file


@pytest.mark.parametrize(
    ("search", "message"),
    [
        ("", "no \\[search\\] section"),
        ('[search]\n"model.dimm" = [2, 16]\n', r'"model.dimm" = 2: .*dimm'),
        ('[search]\n"data.test_fraction" = [0.1, 0.3]\n', r"\[data\] section is not searched"),
        ('[search]\n"model.dim" = [0, 16]\n', r'"model.dim" = 0: .*dim'),
        ('[search]\n"training.optimizer" = ["adam", "sgd"]\n', r"'sgd'"),
        ('[search]\n"model.dim" = [16, 2]\n', "finite low < high"),
        ('[search]\n"model.dim" = "16"\n', "give \\[low, high\\]"),
        ('[search]\n"training.learning_rate" = {low = 0.0, high = 1.0, log = true}\n',
         "log-scale range needs low > 0"),
        ('[search]\n"model.dim" = {low = 2}\n', "needs both low and high"),
        ('[search]\n"model.dim" = {choices = [2], low = 1}\n', "either choices or low/high"),
        ('[search]\n"training.optimizer" = {choices = "adam"}\n', "choices must be a list"),
    ],
)  # fmt: skip
def test_a_bad_search_space_is_named_before_any_data(
    tmp_path: Path, search: str, message: str
) -> None:
    path = _write(tmp_path, search)
    (tmp_path / "ratings.csv").unlink()  # checked before the data is read
    with pytest.raises(ConfigError, match=message):
        SearchConfig.load(path)


# ----------------------------------------------------------------------------- end to end


def _tune(path: Path, out: Path, trials: int) -> dict:
    result = CliRunner().invoke(
        wager.cli.app, ["tune", str(path), "--trials", str(trials), "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_search_writes_its_best_config_and_resumes(tmp_path: Path) -> None:
    path, out = _write(tmp_path), tmp_path / "study"
    first = _tune(path, out, 4)
    assert first["ok"] and first["metric"] == "rmse" and first["direction"] == "minimize"
    assert len(first["trials"]) == 4
    assert {Path(f).name for f in first["files"].values()} == {
        "study.db", "best.toml", "trials.csv", "trials.png"}  # fmt: skip
    assert all((out / name).is_file() for name in ("study.db", "best.toml", "trials.csv",
                                                   "trials.png"))  # fmt: skip
    done = [t for t in first["trials"] if t["state"] == "complete"]
    assert first["best_value"] == min(t["objective"] for t in done)

    # best.toml is a plain run config holding the best values
    best = RunConfig.load(out / "best.toml")
    assert best.model.dim == first["best_params"]["model.dim"]
    assert best.training.learning_rate == pytest.approx(
        first["best_params"]["training.learning_rate"])  # fmt: skip
    assert best.training.optimizer == first["best_params"]["training.optimizer"]

    # the objective is the validation metric: refit the best config on the same rows
    rd = load_run_data(best)
    rec = Recommender(best).fit(rd.train, rd.valid)
    assert rd.valid is not None
    assert rec.evaluate(rd.valid)["rmse"] == pytest.approx(first["best_value"], rel=1e-6)
    assert not math.isclose(rec.evaluate(rd.test)["rmse"], first["best_value"], rel_tol=1e-3)

    # a second run with the same --out resumes: the first 4 trials kept, 2 more run
    again = _tune(path, out, 6)
    assert len(again["trials"]) == 6 and again["trials"][:4] == first["trials"]
    assert {t["state"] for t in again["trials"]} <= {"complete", "pruned"}
    table = pd.read_csv(out / "trials.csv")
    assert len(table) == 6 and list(table.columns[:4]) == ["trial", "state", "objective",
                                                          "seconds"]  # fmt: skip


def test_an_out_folder_of_other_files_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "study"
    out.mkdir()
    (out / "best.toml").write_text("mine\n")
    result = CliRunner().invoke(
        wager.cli.app, ["tune", str(_write(tmp_path)), "--trials", "1", "--out", str(out)]
    )
    assert result.exit_code == 2
    assert "no study.db" in " ".join(result.output.split())
    assert (out / "best.toml").read_text() == "mine\n"


def test_wager_train_on_a_search_config_points_to_wager_tune(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[search\] is a search space, read by `wager tune"):
        RunConfig.load(_write(tmp_path))


def test_a_diverging_trial_is_recorded_as_failed_and_the_search_goes_on(tmp_path: Path) -> None:
    path = _write(tmp_path, '[search]\n"training.learning_rate" = {choices = [0.05, 1e15]}\n')
    result = _tune(path, tmp_path / "study", 4)
    states = {t["training.learning_rate"]: t["state"] for t in result["trials"]}
    assert states == {0.05: "complete", 1e15: "fail"}
    assert result["best_params"] == {"training.learning_rate": 0.05}


def test_ctrl_c_keeps_the_study_and_says_how_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wager.tuning

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(wager.tuning, "tune", interrupted)
    out = tmp_path / "study"
    result = CliRunner().invoke(
        wager.cli.app, ["tune", str(_write(tmp_path)), "--trials", "2", "--out", str(out)]
    )
    assert result.exit_code == 130 and "Traceback" not in result.output
    message = " ".join(result.stderr.split())
    assert f"interrupted: {out / 'study.db'} keeps the finished trials" in message
    assert "run the same command again to resume" in message
