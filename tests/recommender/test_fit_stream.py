"""Training on rows streamed from Parquet (``[data] stream = true``, ``Recommender.fit_stream``).

The reference of a streamed fit is the in-memory fit on the same training rows: with one
batch per epoch (batch_size >= rows) the order of the rows in the batch changes only the
float rounding of the loss's sum, and with no random draws in the step (no bootstrap, no
dropout, no id drop-out) the two take the same Adam steps, so their weights agree to 1e-5.
The memory criterion is checked on a table whose in-memory form is larger than the budget:
a streamed run's peak RSS above the same run on a 20,000-row slice (the process's fixed
cost: torch, wager, the model) stays under ``memory_budget_mb``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import wager.cli
import wager.recommender.streamed
from wager.config import DataConfig, EnsembleConfig, ModelConfig, RunConfig, TrainConfig
from wager.data.schema import Numeric, Schema
from wager.data.streaming import ParquetSource, StreamedRows, scan, split_codes
from wager.pipeline import train_run
from wager.recommender import Recommender
from wager.training.checkpoint import EpochReport, MemoryCheckpoint

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = Schema(
    user="user_id", item="item_id", label="rating", label_kind="rating", rating_range=(1, 5)
)
COLUMNS = ["user_id", "item_id", "rating"]


def _ratings(n: int, users: int = 50, items: int = 30, seed: int = 0) -> pd.DataFrame:
    """round(3 + user bias + item bias + noise), 1..5."""
    rng = np.random.default_rng(seed)
    u, i = rng.integers(0, users, n), rng.integers(0, items, n)
    bu, bi = rng.normal(0, 0.8, users), rng.normal(0, 0.8, items)
    y = np.clip(np.rint(3 + bu[u] + bi[i] + rng.normal(0, 0.5, n)), 1, 5)
    return pd.DataFrame(
        {"user_id": [f"u{x}" for x in u], "item_id": [f"i{x}" for x in i], "rating": y}
    )


def _config(**training: object) -> RunConfig:
    return RunConfig(
        schema=SCHEMA,
        data=DataConfig(stream=True, duplicates="keep", valid_fraction=0.0, test_fraction=0.2),
        model=ModelConfig(type="biased_mf", dim=3, oov_rate=0.0, dropout=0.0),
        training=TrainConfig(**{"epochs": 4, "batch_size": 4096, "learning_rate": 0.05,
                                **training}),  # type: ignore[arg-type]
        ensemble=EnsembleConfig(members=2, bootstrap=False),
        seed=0,
    )  # fmt: skip


def _stream(folder: Path, df: pd.DataFrame, config: RunConfig) -> StreamedRows:
    for k, bounds in enumerate(np.array_split(np.arange(len(df)), 3)):
        df.iloc[bounds].to_parquet(folder / f"part-{k}.parquet", row_group_size=150)
    src = ParquetSource(folder, COLUMNS)
    d = config.data
    found = scan(
        src, SCHEMA, seed=0, valid_fraction=d.valid_fraction, test_fraction=d.test_fraction,
        sample_rows=d.stream_sample_rows,
    )  # fmt: skip
    return StreamedRows(src, found, 0, d.valid_fraction, d.test_fraction, d.shuffle_buffer)


def test_full_batch_stream_takes_the_in_memory_steps(tmp_path: Path) -> None:
    df = _ratings(1200)
    config = _config()
    rows = _stream(tmp_path, df, config)
    streamed = Recommender(config).fit_stream(rows)
    train = df[split_codes(np.arange(len(df)), 0, 0.0, 0.2) == 0]
    memory = Recommender(replace(config, data=replace(config.data, stream=False))).fit(train)
    a, b = streamed.scorer_.stack.params, memory.scorer_.stack.params
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)
    assert streamed.metrics_["epochs"] == 4
    users, items = ["u0", "u7", "stranger"], ["i1", "i2", "i29"]
    pa, pb = streamed.predict(users, items), memory.predict(users, items)
    torch.testing.assert_close(pa.mean, pb.mean, rtol=0, atol=1e-4)
    assert pa.std is not None and bool((pa.std > 0).all())


def test_a_stopped_stream_resumes_to_the_uninterrupted_run(tmp_path: Path) -> None:
    df = _ratings(3000, seed=1)
    config = replace(
        _config(batch_size=128, epochs=3),
        model=ModelConfig(type="biased_mf", dim=3, oov_rate=0.1, dropout=0.2),
        ensemble=EnsembleConfig(members=2, bootstrap=True),
    )
    rows = _stream(tmp_path, df, config)
    whole = Recommender(config).fit_stream(rows)

    def stop(report: EpochReport) -> None:
        if report.epoch == 2:
            raise KeyboardInterrupt

    checkpoint = MemoryCheckpoint()
    with pytest.raises(KeyboardInterrupt):
        Recommender(config).fit_stream(rows, on_epoch=stop, checkpoint=checkpoint)
    resumed = Recommender(config).fit_stream(rows, checkpoint=checkpoint)
    for k, v in whole.scorer_.stack.params.items():
        assert torch.equal(v, resumed.scorer_.stack.params[k]), k
    assert resumed.history_.train_loss == whole.history_.train_loss


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: replace(c, model=ModelConfig(type="two_tower")), "rating and click models"),
        (lambda c: replace(c, ensemble=EnsembleConfig(members=2, fit="separate")),
         'fit = "stacked"'),
        (lambda c: replace(c, ensemble=EnsembleConfig(members=2, holdout=0.1)), "holdout = 0"),
        (lambda c: replace(c, data=replace(c.data, duplicates="refuse")), 'duplicates = "keep"'),
        (lambda c: replace(c, schema=replace(SCHEMA, item_features=(Numeric("year"),))),
         "item_features = false"),
    ],
)  # fmt: skip
def test_what_a_stream_cannot_do_is_refused_before_the_data(
    change: object, message: str, tmp_path: Path
) -> None:
    config = change(_config())  # type: ignore[operator]
    with pytest.raises(ValueError, match=message):
        train_run(replace(config, data=replace(config.data, path=str(tmp_path / "none"))))


def test_config_refuses_a_streamed_split_other_than_random(tmp_path: Path) -> None:
    from wager.config import ConfigError

    for data in ({"split": "temporal"}, {"format": "movielens"}):
        config = _config()
        config = replace(config, data=replace(config.data, path=str(tmp_path), **data))
        with pytest.raises(ValueError, match='split = "random" and format = "table"'):
            train_run(config)
    with pytest.raises(ConfigError, match="memory_budget_mb"):
        DataConfig(memory_budget_mb=1)


def test_a_plan_over_budget_is_refused_before_the_first_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ratings(2000).to_parquet(tmp_path / "r.parquet", row_group_size=2000)
    config = _config()
    config = replace(
        config,
        data=replace(config.data, path=str(tmp_path / "r.parquet"), memory_budget_mb=16,
                     shuffle_buffer=5_000_000),
    )  # fmt: skip

    def no_scan(*args: object, **kwargs: object) -> None:
        raise AssertionError("the data were read")

    monkeypatch.setattr(wager.recommender.streamed, "scan", no_scan)
    with pytest.raises(ValueError, match="memory_budget_mb = 16") as err:
        train_run(config)
    assert "shuffle_buffer" in str(err.value) and "MiB" in str(err.value)


def _stream_toml(path: Path, *, valid: float, test: float, buffer: int, sample: int,
                 budget: int, dim: int, epochs: int, batch: int) -> str:  # fmt: skip
    """A streamed rating run's config over the Parquet rows at ``path``."""
    return textwrap.dedent(f"""\
        seed = 0
        [schema]
        user = "user_id"
        item = "item_id"
        label = "rating"
        label_kind = "rating"
        rating_range = [1.0, 5.0]
        [data]
        path = "{path}"
        stream = true
        duplicates = "keep"
        valid_fraction = {valid}
        test_fraction = {test}
        shuffle_buffer = {buffer}
        stream_sample_rows = {sample}
        memory_budget_mb = {budget}
        [model]
        type = "biased_mf"
        dim = {dim}
        [training]
        epochs = {epochs}
        batch_size = {batch}
        [ensemble]
        members = 2
        """)


def test_cli_trains_evaluates_and_reloads_a_streamed_run(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    df = _ratings(4000, seed=3)
    for k, bounds in enumerate(np.array_split(np.arange(len(df)), 2)):
        df.iloc[bounds].to_parquet(data / f"part-{k}.parquet", row_group_size=500)
    config = tmp_path / "stream.toml"
    config.write_text(
        _stream_toml(data, valid=0.1, test=0.1, buffer=1000, sample=100_000, budget=64,
                     dim=4, epochs=2, batch=256)
    )  # fmt: skip
    out = tmp_path / "run"
    done = CliRunner().invoke(wager.cli.app, ["train", str(config), "--out", str(out), "--json"])
    assert done.exit_code == 0, done.output
    metrics = json.loads((out / "metrics.json").read_text())
    codes = split_codes(np.arange(len(df)), 0, 0.1, 0.1)
    assert metrics["n_train"] == int((codes == 0).sum())
    assert metrics["n_valid"] == int((codes == 1).sum())
    assert metrics["n_test"] == int((codes == 2).sum())
    assert 0.3 < metrics["rmse"] < 1.5
    again = CliRunner().invoke(wager.cli.app, ["evaluate", str(out), "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["rmse"] == pytest.approx(metrics["rmse"])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


_PEAK = """\
import sys
from wager.cli import app
code = 0
try:
    app(sys.argv[1:])
except SystemExit as e:
    code = e.code
# VmHWM: this process's own peak (ru_maxrss would keep the parent's from before exec)
with open("/proc/self/status") as status, open(sys.argv[-1] + ".rss", "w") as f:
    print(next(line.split()[1] for line in status if line.startswith("VmHWM")), file=f)
sys.exit(code)
"""


def _peak_rss_mib(config: Path, out: Path) -> float:
    """Peak RSS (MiB) of ``wager train CONFIG --out OUT`` in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", _PEAK, "train", str(config), "--json", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["ok"] is True
    return int(Path(str(out) + ".rss").read_text()) / 1024  # VmHWM: KiB


def test_streamed_training_stays_under_its_memory_budget(tmp_path: Path) -> None:
    """5M rating rows (more than twice the budget of 64 MiB as a DataFrame, pandas' Arrow
    strings) in 10 part files; one epoch. The fixed cost is the same command on the first
    20,000 rows (the same users and items, so the same model)."""
    budget = 64
    n, users, items = 5_000_000, 2000, 500
    rng = np.random.default_rng(0)
    big, small = tmp_path / "big", tmp_path / "small"
    big.mkdir()
    small.mkdir()
    for k in range(10):
        m = n // 10
        part = pd.DataFrame(
            {
                "user_id": pd.array(rng.integers(0, users, m)).astype(str),
                "item_id": pd.array(rng.integers(0, items, m)).astype(str),
                "rating": rng.integers(1, 6, m).astype(np.float64),
            }
        )
        part.to_parquet(big / f"part-{k:02d}.parquet", row_group_size=50_000)
        if k == 0:
            part.head(20_000).to_parquet(small / "part-00.parquet")
    in_memory = pd.read_parquet(big / "part-00.parquet").memory_usage(deep=True).sum() * 10
    assert in_memory > 2 * budget * 2**20  # the rows as a DataFrame: twice the budget
    peaks = {}
    for name, folder in (("small", small), ("big", big)):
        config = tmp_path / f"{name}.toml"
        config.write_text(
            _stream_toml(folder, valid=0.001, test=0.001, buffer=100_000, sample=10_000,
                         budget=budget, dim=8, epochs=1, batch=4096)
        )  # fmt: skip
        peaks[name] = _peak_rss_mib(config, tmp_path / f"run-{name}")
    grown = peaks["big"] - peaks["small"]
    assert grown < budget, peaks
    metrics = json.loads((tmp_path / "run-big" / "metrics.json").read_text())
    assert metrics["n_train"] > 0.99 * n
