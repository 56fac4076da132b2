"""The eleven defect classes of issue 13, one table: each input with the failure it had and
the named error or correct behaviour it has now. (Each class has deeper tests beside its
module; this table is the index.)"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from conftest import rating_toml
from wager.cli import app
from wager.config import ModelConfig, RunConfig, TrainConfig
from wager.data.loaders import load_dataset
from wager.data.loaders.download import download
from wager.data.schema import Schema
from wager.errors import DataError, TrainingDivergedError
from wager.prediction import Prediction
from wager.recommender import Catalogue, Recommender
from wager.runs import RunDirectory, RunError


def _ratings() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    items = ["[/]", "[bold]x", "i2", "i3", "i4", "i5", "i6", "i7"]
    rows = [(f"u{u}", i, int(rng.integers(1, 6))) for u in range(30) for i in items]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating"])


def _cli(*args: str | Path):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("defects")
    _ratings().to_csv(d / "r.csv", index=False)
    (d / "c.toml").write_text(rating_toml(d / "r.csv"))
    result = _cli("train", d / "c.toml", "--out", d / "run", "--json")
    assert result.exit_code == 0, result.output
    return d


def _fresh(tmp_path: Path, workdir: Path) -> Path:
    """A copy of the trained run that a case may damage."""
    import shutil

    shutil.copytree(workdir / "run", tmp_path / "run")
    return tmp_path / "run"


# --- each case: (defect number, what it did, check(tmp_path, workdir)) ----------------------


def d1_non_run_folder(tmp: Path, w: Path) -> None:
    # was: `train --out` into a folder of the user's deleted and overwrote their files
    out = tmp / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("mine")
    result = _cli("train", w / "c.toml", "--out", out)
    assert result.exit_code == 1 and "is not a wager run" in result.output
    assert (out / "chapter1.tex").read_text() == "mine" and len(list(out.iterdir())) == 1


def d1_planted_link(tmp: Path, w: Path) -> None:
    # was: a symlink planted in the run folder made wager write outside it
    run = _fresh(tmp, w)
    outside = tmp / "outside.txt"
    outside.write_text("precious")
    (run / "metrics.json").unlink()
    (run / "metrics.json").symlink_to(outside)
    result = _cli("train", w / "c.toml", "--out", run, "--overwrite")
    assert result.exit_code == 0, result.output
    assert outside.read_text() == "precious"
    assert not (run / "metrics.json").is_symlink() and RunDirectory(run).verify()


def d2_interrupted_save(tmp: Path, w: Path) -> None:
    # was: a save stopped part-way left a run that loaded without its interval calibration
    def stop(p: Path) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        RunDirectory(tmp / "run").write({"config.toml": lambda p: p.write_text("x"), "w": stop})
    with pytest.raises(RunError, match="run folder not found"):
        Recommender.load(tmp / "run")


def d3_divergence(tmp: Path, w: Path) -> None:
    # was: a NaN loss trained on and saved the initial weights as a success
    df = _ratings()
    df["rating"] = df["rating"].astype(float) * 1e30  # the squared error overflows to inf
    cfg = RunConfig(
        schema=Schema(label="rating", label_kind="rating"),
        model=ModelConfig(type="biased_mf", dim=4),
        training=TrainConfig(epochs=2, batch_size=64),
    )
    with pytest.raises(TrainingDivergedError, match="training diverged at epoch 1"):
        Recommender(cfg).fit(df)


def d4_ids_as_written(tmp: Path, w: Path) -> None:
    # was: 007, 7, 7.0 and 1e3 were four users merged into two
    path = tmp / "ids.csv"
    path.write_text("user_id,item_id,rating\n007,a,1\n7,a,2\n7.0,a,3\n1e3,a,4\n")
    ds = load_dataset(path, format="table", schema=Schema(label="rating", label_kind="rating"))
    assert list(ds.interactions["user_id"]) == ["007", "7", "7.0", "1e3"]
    cat = Catalogue.fit(ds.interactions, ds.interactions, None, ds.schema)
    assert cat.n_users == 4


def d5_conflicting_labels(tmp: Path, w: Path) -> None:
    # was: the same (user, item) pair rated 1 and 5 passed silently
    path = tmp / "dup.csv"
    path.write_text("user_id,item_id,rating\nu1,a,1\nu1,a,5\nu2,a,3\n")
    (tmp / "d.toml").write_text(rating_toml(path))
    result = _cli("train", tmp / "d.toml", "--out", tmp / "run")
    assert result.exit_code == 1
    assert "conflicting" in result.output and "duplicates" in result.output


def d6_duplicate_columns(tmp: Path, w: Path) -> None:
    # was: a second column of the same name became a silent `rating.1`
    path = tmp / "twice.csv"
    path.write_text("user_id,item_id,rating,rating\nu1,a,1,2\n")
    with pytest.raises(DataError, match="rating"):
        load_dataset(path, format="table", schema=Schema(label="rating", label_kind="rating"))


def d7_markup_in_ids(tmp: Path, w: Path) -> None:
    # was: an item id `[/]` crashed `wager recommend`; `[bold]x` changed what it showed
    result = _cli("recommend", w / "run", "--user", "u_new", "-k", "8")  # cold: every item
    assert result.exit_code == 0, result.output
    assert "[/]" in result.output and "[bold]x" in result.output
    help_text = _cli("recommend", "--help").output
    assert "[low, high]" in help_text


def d8_out_paths(tmp: Path, w: Path) -> None:
    # was: --out recs.json got Parquet bytes; --out RUN/config.toml overwrote the run's config
    result = _cli("recommend", w / "run", "--user", "u1", "--out", tmp / "recs.json")
    assert result.exit_code != 0 and ".parquet" in result.output
    before = (w / "run" / "config.toml").read_bytes()
    result = _cli("recommend", w / "run", "--user", "u1", "--out", w / "run" / "config.toml")
    assert result.exit_code != 0 and (w / "run" / "config.toml").read_bytes() == before


def d9_user_failures_one_line(tmp: Path, w: Path) -> None:
    # was: tracebacks for corrupt weights, a bad confidence level, a non-UTF-8 config
    run = _fresh(tmp, w)
    with open(run / "weights.safetensors", "r+b") as fh:
        fh.truncate(20)
    result = _cli("recommend", run, "--user", "u1", "--json")
    error = json.loads(result.stdout)["error"]
    assert result.exit_code == 1 and "weights.safetensors" in error["message"]
    (tmp / "bad.toml").write_bytes(b"seed = 0\n# caf\xe9\n")
    result = _cli("train", tmp / "bad.toml")
    assert result.exit_code == 1 and "UTF-8" in result.output
    assert "Traceback" not in result.output


def d10_python_api(tmp: Path, w: Path) -> None:
    # was: an unknown context key was ignored; NaN ids silent; ucb(nan) returned NaN
    rec = Recommender.load(w / "run")
    with pytest.raises(ValueError, match="not a context column"):
        rec.predict(["u1"], ["i2"], context={"positon": 1})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec.predict([None], ["i2"])
    assert any("cold-start" in str(c.message) for c in caught)
    p = Prediction(mean=torch.zeros(2), std=torch.ones(2))
    with pytest.raises(ValueError, match="beta"):
        p.ucb(math.nan)


def d11_download_keeps_user_files(tmp: Path, w: Path) -> None:
    # was: `wager data download` replaced a folder it did not create
    target = tmp / "ml-100k"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="ml-100k"):
        download("movielens-100k", cache_dir=tmp)
    assert (target / "notes.txt").read_text() == "mine"


CASES: list[Callable[[Path, Path], None]] = [
    d1_non_run_folder,
    d1_planted_link,
    d2_interrupted_save,
    d3_divergence,
    d4_ids_as_written,
    d5_conflicting_labels,
    d6_duplicate_columns,
    d7_markup_in_ids,
    d8_out_paths,
    d9_user_failures_one_line,
    d10_python_api,
    d11_download_keeps_user_files,
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_defect(case, tmp_path, workdir):
    case(tmp_path, workdir)
