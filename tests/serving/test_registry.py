"""The model registry: versions of a folder of runs or of one run, the newest served first,
hot activation (the old pair stays usable), and version names that are never paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from serving.tiny_runs import train_registry
from wager.recommender import Recommender
from wager.runs import RunError
from wager.serving.registry import ModelRegistry, UnknownVersionError


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_registry(tmp_path_factory.mktemp("registry"), ("v2", "v10"))


def test_versions_sort_digits_as_numbers_and_the_newest_is_active(registry_dir):
    (registry_dir / "events.db").write_text("")  # not a run: never a version
    (registry_dir / ".v11.checkpoint").mkdir(exist_ok=True)
    (registry_dir / "notes").mkdir(exist_ok=True)
    reg = ModelRegistry(registry_dir)
    assert reg.versions() == ["v2", "v10"]
    assert reg.active == "v10"
    version, rec = reg.current()
    assert version == "v10"
    ref = Recommender.load(registry_dir / "v10").predict(["u1"], ["i1"])
    assert torch.equal(rec.predict(["u1"], ["i1"]).mean, ref.mean)


def test_one_run_folder_is_a_registry_of_one_version(registry_dir):
    reg = ModelRegistry(registry_dir / "v2")
    assert reg.versions() == ["v2"] and reg.active == "v2"
    with pytest.raises(UnknownVersionError, match=r"available: v2$"):
        reg.activate("v10")


def test_activate_swaps_the_pair_and_the_old_one_stays_usable(registry_dir):
    reg = ModelRegistry(registry_dir, active="v2")
    old_version, old = reg.current()
    assert old_version == "v2"
    assert reg.activate("v10").version == "v10"
    assert reg.active == "v10" and reg.current().recommender is not old
    ref = Recommender.load(registry_dir / "v2").predict(["u1"], ["i1"]).mean
    assert torch.equal(old.predict(["u1"], ["i1"]).mean, ref)  # in-flight work finishes


@pytest.mark.parametrize("name", ["../v2", "/etc", "v2/", "..", ".", "", "v2\x00", "v3"])
def test_version_names_that_are_not_listed_versions_are_refused(registry_dir, name):
    reg = ModelRegistry(registry_dir)
    with pytest.raises(UnknownVersionError) as err:
        reg.activate(name)
    assert str(err.value).startswith(f"model version {name!r} is not")
    assert str(err.value).endswith("available: v2, v10")
    assert reg.active == "v10"


def test_a_broken_version_leaves_the_active_one(registry_dir, tmp_path):
    import shutil

    shutil.copytree(registry_dir, tmp_path / "reg")
    (tmp_path / "reg" / "v10" / "weights.safetensors").write_bytes(b"not weights")
    reg = ModelRegistry(tmp_path / "reg", active="v2")
    with pytest.raises(RunError, match=r"weights\.safetensors"):
        reg.activate("v10")
    assert reg.active == "v2"


def _file(folder: Path) -> Path:
    (folder / "f.txt").write_text("")
    return folder / "f.txt"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "nope", "does not exist: give a run folder"),
        (_file, "is not a folder"),
        (lambda p: p, "holds no wager run"),
    ],
)
def test_a_path_without_runs_is_refused_with_the_fix(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(ValueError) as err:
        ModelRegistry(path)
    assert str(err.value).startswith(f"{path} {message}")


def test_an_unknown_first_version_is_refused(registry_dir):
    with pytest.raises(UnknownVersionError, match=r"'v9' is not a version .* v2, v10"):
        ModelRegistry(registry_dir, active="v9")
