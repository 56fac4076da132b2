"""CheckpointDirectory: where an unfinished run keeps its epochs, written and deleted by
wager only (the end-to-end resume is in test_cli_resume.py)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from wager.runs import CheckpointDirectory, RunError


def test_lives_beside_the_run_folder_and_round_trips_the_state(tmp_path):
    ck = CheckpointDirectory(tmp_path / "runs" / "r", {"config": {"seed": 0}})
    assert ck.path == tmp_path / "runs" / ".r.checkpoint"
    assert ck.load() is None and not ck.has_state()
    state = {"epoch": 3, "w": torch.arange(4.0), "rng": torch.get_rng_state(), "x": [1, None]}
    ck.save(state)
    back = ck.load()
    assert back is not None and back["epoch"] == 3 and back["x"] == [1, None]
    assert torch.equal(back["w"], state["w"]) and torch.equal(back["rng"], state["rng"])
    assert ck.last_epoch() == 3
    # nothing written outside the checkpoint folder, and only its two files in it
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [".r.checkpoint"]
    assert sorted(p.name for p in ck.path.iterdir()) == ["checkpoint.json", "state.pt"]


def test_a_failed_save_keeps_the_previous_state_and_no_temporary_file(tmp_path):
    ck = CheckpointDirectory(tmp_path / "r")
    ck.save({"epoch": 1, "w": torch.ones(2)})
    with pytest.raises(Exception):  # noqa: B017 - whatever pickling raises
        ck.save({"epoch": 2, "w": lambda: 0})  # not serialisable
    back = ck.load()
    assert ck.last_epoch() == 1 and back is not None and back["epoch"] == 1
    assert torch.equal(back["w"], torch.ones(2))
    assert sorted(p.name for p in ck.path.iterdir()) == ["checkpoint.json", "state.pt"]


def test_remove_deletes_only_what_wager_wrote(tmp_path):
    ck = CheckpointDirectory(tmp_path / "r")
    ck.save({"epoch": 1})
    (ck.path / "mine.txt").write_text("keep me")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ck.remove()
    assert [p.name for p in ck.path.iterdir()] == ["mine.txt"]
    assert "files wager did not write" in str(caught[0].message)
    ck.remove()  # no marker now: not wager's any more, left alone
    assert (ck.path / "mine.txt").read_text() == "keep me"
    clean = CheckpointDirectory(tmp_path / "s")
    clean.save({"epoch": 1})
    clean.remove()
    assert not clean.path.exists()


@pytest.mark.parametrize("make", ["file", "link", "foreign"])
def test_a_path_wager_did_not_write_is_refused_and_never_written(tmp_path, make):
    ck = CheckpointDirectory(tmp_path / "r")
    target = tmp_path / "elsewhere"
    target.mkdir()
    if make == "file":
        ck.path.write_text("x")
    elif make == "link":
        ck.path.symlink_to(target, target_is_directory=True)
    else:
        ck.path.mkdir()
        (ck.path / "checkpoint.json").write_text('{"written_by": "someone else"}')
    message = f"{ck.path}: exists and was not written by wager"
    with pytest.raises(RunError, match=message):
        ck.check_start(resume=False)
    with pytest.raises(RunError, match=message):
        ck.save({"epoch": 1})
    assert list(target.iterdir()) == []


def test_an_empty_folder_is_taken(tmp_path: Path):
    ck = CheckpointDirectory(tmp_path / "r")
    ck.path.mkdir()
    ck.check_start(resume=False)
    ck.save({"epoch": 1})
    assert ck.has_state()
