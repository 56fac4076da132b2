"""Data-parallel training (``wager.training.distributed``, ``wager train --nproc N``).

The reference of a 2-process run is the same run in one process: with a loss that is a mean
over rows and no random draws inside the step (no dropout, no bootstrap, no id drop-out),
splitting each batch across the processes and summing their weighted gradients takes the
same optimiser steps, so the trained model and its metrics agree up to float rounding of the
sums (stated tolerance: 1e-4 relative on every metric and 1e-4 absolute on predictions of
ratings in 1..5).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import bias_ratings, rating_toml
from wager.config import RunConfig
from wager.pipeline import train_run
from wager.recommender import Recommender
from wager.runs import CheckpointDirectory
from wager.training.checkpoint import EpochReport
from wager.training.distributed import DataParallel, launched_by_torchrun, torchrun_rank

ROOT = Path(__file__).resolve().parents[2]


@given(n=st.integers(0, 300), world=st.integers(2, 8))
def test_shards_are_the_batch_in_order_weighted_by_their_rows(n: int, world: int) -> None:
    idx = torch.randperm(n)
    parts = [DataParallel(rank, world).shard(idx) for rank in range(world)]
    assert torch.equal(torch.cat([p for p, _ in parts]), idx)
    sizes = [len(p) for p, _ in parts]
    assert max(sizes) - min(sizes) <= 1
    weights = [w for _, w in parts]
    assert sum(weights) == pytest.approx(1.0 if n else 0.0)
    assert all(w == pytest.approx(len(p) / n if n else 0.0) for p, w in parts)


def test_alone_there_is_no_group_and_rank_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert DataParallel.current() is None
    assert not launched_by_torchrun() and torchrun_rank() == 0
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launched_by_torchrun() and torchrun_rank() == 1


def _train(config: Path, out: Path, nproc: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT / "tests")}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "wager.cli", "train", str(config), "--out", str(out),
               "--json", "--nproc", str(nproc)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout)  # rank 0 alone prints
    assert printed["ok"] is True and printed["run"] == str(out)
    return json.loads((out / "metrics.json").read_text())


def _config(tmp_path: Path) -> Path:
    bias_ratings().to_csv(tmp_path / "ratings.csv", index=False)
    config = tmp_path / "run.toml"
    config.write_text(
        rating_toml(
            tmp_path / "ratings.csv",
            epochs=4,
            extra="learning_rate = 0.05\npatience = 10\n\n[ensemble]\nmembers = 2\n"
            "bootstrap = false\n",
        )
    )
    return config


def _same_run(one: dict, two: dict) -> None:
    numbers = {k for k, v in one.items() if isinstance(v, float) and "seconds" not in k}
    assert {"rmse", "nll"} <= numbers
    for key in sorted(numbers):
        assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key
    assert two["epochs"] == one["epochs"]


def test_two_processes_train_the_same_run_as_one(tmp_path: Path) -> None:
    config = _config(tmp_path)
    one = _train(config, tmp_path / "one", 1)
    two = _train(config, tmp_path / "two", 2)
    _same_run(one, two)
    assert (one["processes"], two["processes"]) == (1, 2)  # each process took half a batch
    assert one["reduce_seconds"] == 0.0 < two["reduce_seconds"]
    a, b = Recommender.load(tmp_path / "one"), Recommender.load(tmp_path / "two")
    users, items = ["u0", "u7", "u59", "new"], ["i0", "i3", "i29", "i11"]
    pa, pb = a.predict(users, items), b.predict(users, items)
    np.testing.assert_allclose(pb.mean.numpy(), pa.mean.numpy(), rtol=0, atol=1e-4)
    assert pa.std is not None and pb.std is not None
    np.testing.assert_allclose(pb.std.numpy(), pa.std.numpy(), rtol=0, atol=1e-4)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # rank 0 removed the checkpoint; no other rank wrote one


def test_nproc_refuses_als_naming_the_flag(tmp_path: Path) -> None:
    config = tmp_path / "als.toml"
    config.write_text(rating_toml(tmp_path / "missing.csv", model="als"))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "wager.cli", "train", str(config), "--out",
               str(tmp_path / "run"), "--nproc", "2", "--json"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2
    error = json.loads(done.stdout or done.stderr)
    assert "--nproc" in json.dumps(error) and "als" in json.dumps(error)
    assert not (tmp_path / "run").exists()


def test_a_run_stopped_alone_resumes_in_two_processes(tmp_path: Path) -> None:
    """Stopped after epoch 2 in one process (Ctrl-C's KeyboardInterrupt from the epoch
    hook), continued with --nproc 2: both processes load the checkpoint, and the run ends as
    the uninterrupted one-process run does."""
    config = _config(tmp_path)
    straight = _train(config, tmp_path / "straight", 1)

    def stop_after_2(report: EpochReport) -> None:
        if report.epoch == 2:
            raise KeyboardInterrupt

    out = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        train_run(RunConfig.load(config), out=out, on_epoch=stop_after_2)
    assert CheckpointDirectory(out).last_epoch() == 2 and not out.exists()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "wager.cli", "train", str(config), "--out", str(out),
               "--json", "--nproc", "2", "--resume"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = json.loads((out / "metrics.json").read_text())
    _same_run(straight, resumed)
    assert resumed["processes"] == 2
