"""Long runs that a user can watch, stop and resume: ``wager train`` end to end.

A small rating run (biased MF with dropout and OOV drops, an ensemble of 2 with bootstrap,
4 epochs whose best is the last) is trained once without interruption through the command
line; the tests stop the same run after epoch 2 (a hook that raises KeyboardInterrupt, as
Ctrl-C does) or during its evaluation, resume it, and compare metrics.json: equal, but the
wall times. Then the refusals, each paired with its message, and the log lines.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner, Result

import wager.cli.runs
from conftest import rating_toml
from wager.config import RunConfig
from wager.pipeline import train_run
from wager.recommender import Recommender
from wager.runs import CheckpointDirectory
from wager.training.checkpoint import EpochReport

EPOCHS = 4
LINE = re.compile(
    r"^epoch (\d+)/4  loss (\d+\.\d{4})  valid rmse (\d+\.\d{4}) "
    r"\(best (\d+\.\d{4}) at epoch (\d+)\)  \d+\.\d s$"
)


def _toml(data: Path, learning_rate: float = 0.05) -> str:
    return rating_toml(
        data,
        epochs=EPOCHS,
        model_extra="dropout = 0.2\noov_rate = 0.1\n",
        extra=f"learning_rate = {learning_rate}\npatience = 10\n\n[ensemble]\nmembers = 2\n",
    )


def _ratings() -> pd.DataFrame:
    """40 users rate 10 of 25 items: round(3 + user bias + item bias), clipped to 1..5, so
    that validation RMSE improves every epoch (the best epoch is the last)."""
    rng = np.random.default_rng(0)
    user_bias, item_bias = rng.normal(0, 1, 40), rng.normal(0, 1, 25)
    rows = [
        (f"u{u}", f"i{i}", int(np.clip(np.rint(3 + user_bias[u] + item_bias[i]), 1, 5)))
        for u in range(40)
        for i in rng.choice(25, size=10, replace=False)
    ]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating"])


def _invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(wager.cli.app, [str(a) for a in args])


def _plain(text: str) -> str:
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())


def _metrics(run: Path) -> dict:
    """metrics.json without the wall times (which differ between any two runs)."""
    metrics = json.loads((run / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if "seconds" not in k}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("resume")
    _ratings().to_csv(d / "ratings.csv", index=False)
    (d / "run.toml").write_text(_toml(d / "ratings.csv"))
    return d


@pytest.fixture(scope="module")
def straight(work: Path) -> tuple[Path, Result]:
    """The uninterrupted run, through the CLI with --json (stderr is not a terminal)."""
    run = work / "runs" / "straight"
    result = _invoke("train", work / "run.toml", "--out", run, "--json")
    assert result.exit_code == 0, result.output
    return run, result


def test_uninterrupted_run_best_epoch_is_after_the_interruption_point(straight):
    # otherwise "resume gives the same weights" would hold trivially (the best epoch kept)
    run, _ = straight
    assert min(_metrics(run)["best_epoch"]) >= 2  # 0-based: epochs 3 and 4
    assert not CheckpointDirectory(run).path.exists()  # removed once the run was saved


def test_log_lines_one_per_epoch_on_stderr_and_clean_json_on_stdout(straight):
    _run, result = straight
    payload = json.loads(result.stdout)  # stdout is the JSON object alone
    assert payload["ok"] is True and payload["epochs"] == EPOCHS
    lines = result.stderr.splitlines()
    assert len(lines) == EPOCHS
    found = [LINE.match(line) for line in lines]
    assert all(found), lines
    epochs = [int(m.group(1)) for m in found]  # type: ignore[union-attr]
    assert epochs == [1, 2, 3, 4]
    # the shown metric is the validation RMSE (positive), the best is the minimum so far
    shown = [float(m.group(3)) for m in found]  # type: ignore[union-attr]
    for i, m in enumerate(found):
        assert m is not None
        best_at = int(np.argmin(shown[: i + 1]))
        assert float(m.group(4)) == pytest.approx(shown[best_at], abs=1e-4)
        assert int(m.group(5)) == best_at + 1


def test_stopped_after_epoch_2_and_resumed_equals_the_uninterrupted_run(work, straight):
    cfg = RunConfig.load(work / "run.toml")
    out = work / "runs" / "stopped"
    seen: list[int] = []

    def stop_after_2(report: EpochReport) -> None:
        seen.append(report.epoch)
        if report.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, out=out, on_epoch=stop_after_2)
    checkpoint = CheckpointDirectory(out)
    assert not out.exists()  # no run folder, no half run
    assert sorted(p.name for p in out.parent.iterdir()) == [".stopped.checkpoint", "straight"]
    assert checkpoint.has_state() and checkpoint.last_epoch() == 2
    train_run(cfg, out=out, resume=True, on_epoch=lambda r: seen.append(r.epoch))
    assert seen == [1, 2, 3, 4]  # the resumed run went on at epoch 3
    assert _metrics(out) == _metrics(straight[0])
    assert not checkpoint.path.exists()
    # the saved weights are the same too
    a, b = Recommender.load(straight[0]), Recommender.load(out)
    users, items = ["u1", "u2", "u3"], ["i1", "i2", "i4"]
    pa, pb = a.predict(users, items), b.predict(users, items)
    assert pa.mean.tolist() == pb.mean.tolist() and pa.std.tolist() == pb.std.tolist()


def test_ctrl_c_during_evaluation_leaves_no_run_and_resume_finishes_it(work, straight, monkeypatch):
    cfg = RunConfig.load(work / "run.toml")
    out = work / "runs" / "late"

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Recommender, "evaluate", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train_run(cfg, out=out)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if ".partial" in p.name]
    assert CheckpointDirectory(out).last_epoch() == EPOCHS
    epochs: list[int] = []
    train_run(cfg, out=out, resume=True, on_epoch=lambda r: epochs.append(r.epoch))
    assert epochs == []  # training had finished: the resume went on to evaluate and save
    assert _metrics(out) == _metrics(straight[0])


def test_ctrl_c_in_wager_train_says_what_is_kept_and_the_exact_resume_command(
    work, straight, monkeypatch
):
    out = work / "runs" / "cli"
    config = work / "run.toml"
    real = wager.cli.runs.epoch_line

    def ctrl_c_after_2(report: EpochReport) -> str:
        if report.epoch == 2:
            raise KeyboardInterrupt
        return real(report)

    with monkeypatch.context() as m:
        m.setattr(wager.cli.runs, "epoch_line", ctrl_c_after_2)
        result = _invoke("train", config, "--out", out, "--json")
    assert result.exit_code == 130
    assert result.stdout == ""  # nothing on stdout: no JSON of a run that was not saved
    command = f"wager train {config} --out {out} --resume --json"
    checkpoint = CheckpointDirectory(out).path
    assert _plain(result.stderr).endswith(
        f"interrupted: no run was saved to {out}; the last finished epoch (2) is "
        f"checkpointed in {checkpoint}. Continue with: {command}"
    )
    assert not out.exists()
    resumed = _invoke(*shlex.split(command)[1:])
    assert resumed.exit_code == 0, resumed.output
    assert [line.split()[1] for line in resumed.stderr.splitlines()] == ["3/4", "4/4"]
    assert _metrics(out) == _metrics(straight[0])


def _stopped_run(work: Path, name: str) -> Path:
    """A run to ``runs/<name>`` stopped after epoch 1 (its checkpoint is there)."""
    out = work / "runs" / name

    def stop(report: EpochReport) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(RunConfig.load(work / "run.toml"), out=out, on_epoch=stop)
    return out


def test_plain_run_refused_while_a_checkpoint_is_there(work):
    out = _stopped_run(work, "refused")
    result = _invoke("train", work / "run.toml", "--out", out)
    assert result.exit_code == 1
    checkpoint = CheckpointDirectory(out).path
    assert _plain(result.output) == (
        f"error: {checkpoint}: holds the checkpoint of an unfinished run to {out} (epoch 1 "
        f"finished); pass --resume to continue it, or delete {checkpoint} to start fresh"
    )
    assert CheckpointDirectory(out).has_state()  # left as it was


def test_resume_without_a_checkpoint_is_refused(work):
    out = work / "runs" / "never"
    result = _invoke("train", work / "run.toml", "--out", out, "--resume", "--json")
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert error["message"] == (
        f"--resume: there is no checkpoint of an unfinished run to {out} (wager keeps it in "
        f"{work / 'runs' / '.never.checkpoint'}); run without --resume to start fresh"
    )
    assert not out.exists() and not (work / "runs" / ".never.checkpoint").exists()


def test_resume_with_another_config_or_data_is_refused_naming_what_differs(work):
    out = _stopped_run(work, "changed")
    checkpoint = CheckpointDirectory(out).path
    other = work / "other.toml"
    other.write_text(_toml(work / "ratings.csv", learning_rate=0.02))
    result = _invoke("train", other, "--out", out, "--resume")
    assert result.exit_code == 1
    assert _plain(result.output) == (
        f"error: --resume: the checkpoint {checkpoint} was written for another run: "
        "[training] learning_rate is 0.05 in the checkpoint, 0.02 now. Restore what it was "
        f"started with, or delete {checkpoint} and run without --resume to start fresh"
    )
    # the same config over other data (another copy of the table, one rating changed)
    data = _ratings()
    data.loc[0, "rating"] = 6 - data.loc[0, "rating"]
    data.to_csv(work / "ratings2.csv", index=False)
    result = _invoke(
        "train", work / "run.toml", "--out", out, "--resume", "--data-dir", work / "ratings2.csv"
    )
    assert result.exit_code == 1
    text = _plain(result.output)
    assert "was written for another run: training data is {" in text
    assert "config_sha256" not in text  # [data] path is not part of the config compared
    assert CheckpointDirectory(out).has_state()  # nothing was changed by the refusals


def test_a_checkpoint_folder_wager_did_not_write_is_never_used(work):
    out = work / "runs" / "foreign"
    folder = work / "runs" / ".foreign.checkpoint"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    result = _invoke("train", work / "run.toml", "--out", out)
    assert result.exit_code == 1
    assert _plain(result.output) == (
        f"error: {folder}: exists and was not written by wager (no checkpoint.json of "
        f"wager's); wager keeps the checkpoint of --out {out} there and never writes into or "
        "deletes what it did not write: move it away"
    )
    assert (folder / "notes.txt").read_text() == "mine"
