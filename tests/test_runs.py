"""RunDirectory: a run is written whole or not at all, never loses user files, loads verified."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from wager.config import EnsembleConfig, RunConfig, TrainConfig
from wager.data.schema import Schema
from wager.recommender import RUN_FILES, Recommender
from wager.runs import MANIFEST, RunDirectory, RunError


def _writers(names=("a.txt", "b/c.txt")):
    return {n: (lambda p, n=n: p.write_text(f"content of {n}")) for n in names}


def test_write_verify_and_manifest_contents(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.write(_writers(), extra={"model": "x"})
    files = run.verify()
    assert sorted(files) == ["a.txt", "b/c.txt"]
    manifest = json.loads((tmp_path / "run" / MANIFEST).read_text())
    assert manifest["format_version"] == 2 and manifest["model"] == "x"
    # sha256 of "content of a.txt", worked out with hashlib by hand
    import hashlib

    assert files["a.txt"]["sha256"] == hashlib.sha256(b"content of a.txt").hexdigest()
    assert files["a.txt"]["bytes"] == len("content of a.txt")
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temporary folder left


@pytest.mark.parametrize("fail_at", [0, 1, 2])
def test_interrupted_write_leaves_nothing_or_the_previous_run(tmp_path, fail_at):
    target = tmp_path / "run"

    def writers():
        out = {}
        for i, name in enumerate(["a.txt", "b.txt", "c.txt"]):

            def write(p, i=i, name=name):
                if i == fail_at:
                    p.write_text("half")
                    raise KeyboardInterrupt  # Ctrl-C in the middle of the save
                p.write_text(name)

            out[name] = write
        return out

    with pytest.raises(KeyboardInterrupt):
        RunDirectory(target).write(writers())
    assert not target.exists() and list(tmp_path.iterdir()) == []
    # over a previous run: the previous run stays whole
    RunDirectory(target).write(_writers())
    with pytest.raises(KeyboardInterrupt):
        RunDirectory(target).write(writers(), overwrite=True)
    assert sorted(RunDirectory(target).verify()) == ["a.txt", "b/c.txt"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: (d.mkdir(), (d / "thesis.tex").write_text("mine")), "is not a wager run"),
        (lambda d: d.write_text("a file"), "is a file"),
        (lambda d: d.symlink_to(d.parent / "elsewhere", target_is_directory=True), "symbolic"),
    ],
)
def test_refuses_targets_that_would_lose_or_expose_files(tmp_path, setup, message):
    (tmp_path / "elsewhere").mkdir()
    target = tmp_path / "out"
    setup(target)
    with pytest.raises(RunError, match=message):
        RunDirectory(target).write(_writers())
    assert list((tmp_path / "elsewhere").iterdir()) == []
    if target.is_dir() and not target.is_symlink():
        assert (target / "thesis.tex").read_text() == "mine"


def test_overwrite_needs_the_flag_and_deletes_only_listed_files(tmp_path):
    target = tmp_path / "run"
    RunDirectory(target).write(_writers())
    with pytest.raises(RunError, match="--overwrite"):
        RunDirectory(target).write(_writers())
    (target / "notes.md").write_text("user notes")  # a file wager did not write
    with pytest.warns(UserWarning, match="did not write"):
        RunDirectory(target).write(_writers(["z.txt"]), overwrite=True)
    assert sorted(RunDirectory(target).verify()) == ["z.txt"]
    kept = [p for p in tmp_path.iterdir() if p.name.startswith(".run.old")]
    assert len(kept) == 1 and (kept[0] / "notes.md").read_text() == "user notes"


def test_verify_names_missing_and_corrupt_files(tmp_path):
    target = tmp_path / "run"
    RunDirectory(target).write(_writers(["a.txt", "b.txt", "c.txt"]))
    (target / "a.txt").unlink()
    with open(target / "b.txt", "r+b") as fh:  # truncated
        fh.truncate(3)
    (target / "c.txt").write_text("content of c.tx!")  # same size, other bytes
    with pytest.raises(
        RunError, match=r"missing: a\.txt; corrupt \(checksum differs\): b\.txt, c\.txt"
    ):
        RunDirectory(target).verify()


def test_verify_refuses_folders_without_a_manifest_or_another_format(tmp_path):
    with pytest.raises(RunError, match="run folder not found"):
        RunDirectory(tmp_path / "nope").verify()
    with pytest.raises(RunError, match=r"no manifest\.json"):
        RunDirectory(tmp_path).verify()
    (tmp_path / MANIFEST).write_text(json.dumps({"format_version": 1, "files": {}}))
    with pytest.raises(RunError, match="format version 1"):
        RunDirectory(tmp_path).verify()
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(RunError, match="unreadable manifest"):
        RunDirectory(tmp_path).verify()


def _fitted() -> Recommender:
    df = pd.DataFrame(
        {"user_id": [1, 1, 2, 2, 3, 3], "item_id": [1, 2, 1, 2, 1, 3], "click": [1, 0, 0, 1, 1, 0]}
    )
    cfg = RunConfig(
        schema=Schema(label="click"),
        training=TrainConfig(epochs=1),
        ensemble=EnsembleConfig(members=2),
    )
    return Recommender(cfg).fit(df)


@pytest.fixture(scope="module")
def fitted():
    return _fitted()


def test_recommender_save_interrupted_at_each_file_never_loads(tmp_path, fitted, monkeypatch):
    """A save stopped at any of the run's files leaves no run that loads as complete."""
    import wager.recommender.persist as persist

    names = [RUN_FILES[k] for k in ("config", "weights", "encoders", "catalogue", "uncertainty",
                                    "metrics")]  # fmt: skip
    original = persist.RunDirectory.write
    for i, stop_at in enumerate(names):
        target = tmp_path / f"run{i}"

        def write(self, writers, stop_at=stop_at, **kw):
            def stopping(p, w=writers[stop_at]):
                w(p)
                raise KeyboardInterrupt

            return original(self, {**writers, stop_at: stopping}, **kw)

        monkeypatch.setattr(persist.RunDirectory, "write", write)
        with pytest.raises(KeyboardInterrupt):
            fitted.save(target)
        monkeypatch.setattr(persist.RunDirectory, "write", original)
        assert not target.exists()
        with pytest.raises(RunError, match="run folder not found"):
            Recommender.load(target)
    assert sorted(os.listdir(tmp_path)) == []


def test_recommender_load_names_a_corrupt_weights_file(tmp_path, fitted):
    fitted.save(tmp_path / "run")
    with open(tmp_path / "run" / RUN_FILES["weights"], "r+b") as fh:
        fh.truncate(10)
    with pytest.raises(RunError, match=r"corrupt \(checksum differs\): weights\.safetensors"):
        Recommender.load(tmp_path / "run")
