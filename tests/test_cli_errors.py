"""Every failure a user can cause exits non-zero with one ``error:`` line naming the file or
flag (never a traceback), or with ``--json`` one JSON error object; a bug keeps its
traceback. Also: help text prints as written, and ``wager --version``.

A tiny ``biased_mf`` run is trained once per module; each damaged-run case copies it and
damages one file the way a user's disk, editor or interrupted copy would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner, Result

from conftest import rating_toml
from wager.cli import app, data_app

# 9 bytes "seed = 0\n" + 5 bytes "# caf" put the Latin-1 "é" (0xe9) at offset 14
NOT_UTF8 = b"seed = 0\n# caf\xe9\n"


def _invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def _plain(text: str) -> str:
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli_errors")
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{i}", int(rng.integers(1, 6))) for u in range(20) for i in range(5)]
    pd.DataFrame(rows, columns=["user_id", "item_id", "rating"]).to_csv(
        d / "ratings.csv", index=False
    )
    (d / "run.toml").write_text(rating_toml(d / "ratings.csv", epochs=1))
    result = _invoke("train", d / "run.toml", "--out", d / "run", "--json")
    assert result.exit_code == 0, result.output
    return d / "run"


def _truncate(path: Path, n: int) -> None:
    path.write_bytes(path.read_bytes()[:n])


def _replace_with_dir(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


# (id, damage to the run copy, command line (d = tmp dir, r = damaged run), exit code,
#  fragments of the one error line)
Damage = Callable[[Path], object]
Build = Callable[[Path, Path], list[str | Path]]
CASES: list[tuple[str, Damage | None, Build, int, tuple[str, ...]]] = [
    # --- damaged run folders: the damaged file is named
    ("weights_truncated_header", lambda r: _truncate(r / "weights.safetensors", 100),
     lambda d, r: ["recommend", r, "--user", "u1"], 1,
     ("run: incomplete run", "corrupt (checksum differs): weights.safetensors", "retrain")),
    ("weights_truncated_data", lambda r: _truncate(r / "weights.safetensors", -8),
     lambda d, r: ["recommend", r, "--user", "u1"], 1,
     ("run: incomplete run", "corrupt (checksum differs): weights.safetensors")),
    ("weights_empty", lambda r: _truncate(r / "weights.safetensors", 0),
     lambda d, r: ["evaluate", r], 1,
     ("run: incomplete run", "corrupt (checksum differs): weights.safetensors")),
    ("weights_is_a_directory", lambda r: _replace_with_dir(r / "weights.safetensors"),
     lambda d, r: ["recommend", r, "--user", "u1"], 1,
     ("run: incomplete run (missing: weights.safetensors)",)),
    ("catalogue_truncated", lambda r: _truncate(r / "catalogue.npz", 50),
     lambda d, r: ["recommend", r, "--user", "u1"], 1,
     ("run: incomplete run", "corrupt (checksum differs): catalogue.npz")),
    ("catalogue_missing_key", lambda r: _write(r / "catalogue.npz", "{}"),
     lambda d, r: ["recommend", r, "--user", "u1"], 1,
     ("run: incomplete run", "corrupt (checksum differs): catalogue.npz")),
    ("encoders_not_utf8", lambda r: _write(r / "encoders.json", NOT_UTF8),
     lambda d, r: ["evaluate", r], 1,
     ("run: incomplete run", "corrupt (checksum differs): encoders.json")),
    ("run_config_not_utf8", lambda r: _write(r / "config.toml", NOT_UTF8),
     lambda d, r: ["recommend", r, "--user", "u1"], 1,
     ("run: incomplete run", "corrupt (checksum differs): config.toml")),
    ("run_missing", None, lambda d, r: ["recommend", d / "no_run", "--user", "u1"], 1,
     ("no_run: run folder not found",)),
    ("run_without_weights", lambda r: (r / "weights.safetensors").unlink(),
     lambda d, r: ["evaluate", r], 1,
     ("run: incomplete run (missing: weights.safetensors)",)),
    # --- config files
    ("config_not_utf8", None, lambda d, r: ["train", _write(d / "c.toml", NOT_UTF8)], 1,
     ("c.toml: not a UTF-8 text file (invalid continuation byte at byte 14)",)),
    ("config_is_a_directory", None, lambda d, r: ["train", d], 1, (" is a directory",)),
    ("config_wrong_value_type", None,
     lambda d, r: ["train", _write(d / "c.toml", '[training]\nepochs = "2"\n')], 1,
     ("c.toml: ",)),
    # --- data files
    ("data_not_utf8", None,
     lambda d, r: ["data", "info", _write(d / "r.csv", b"user_id,item_id\n1,caf\xe9\n"),
                   "--format", "table"], 1,
     ("r.csv: the file is not UTF-8 text",)),
    ("data_directory_for_a_file", None,
     lambda d, r: ["data", "info", r.parent / "ratings.csv", "--format", "table",
                   "--item-features", r], 1,
     ("run: this is a directory",)),
    # --- flags
    ("confidence_level_one", None,
     lambda d, r: ["recommend", r, "--user", "u1", "--confidence-level", "1"], 2,
     ("--confidence-level must be in (0, 1)", "got 1.0")),
    ("confidence_level_negative", None,
     lambda d, r: ["recommend", r, "--user", "u1", "--confidence-level", "-0.5"], 2,
     ("--confidence-level must be in (0, 1)", "got -0.5")),
    ("k_zero", None, lambda d, r: ["recommend", r, "--user", "u1", "-k", "0"], 2,
     ("-k must be >= 1, got 0",)),
    ("horizon_zero", None, lambda d, r: ["recommend", r, "--user", "u1", "--horizon", "0"], 2,
     ("--horizon must be > 0",)),
    ("no_users", None, lambda d, r: ["recommend", r], 2, ("give --user U", "--all-users")),
    ("rating_min_alone", None,
     lambda d, r: ["data", "info", r.parent / "ratings.csv", "--rating-min", "1"], 2,
     ("--rating-min and --rating-max go together",)),
]  # fmt: skip


def _run_case(tmp_path: Path, trained: Path, damage: Damage | None, build: Build) -> Result:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    shutil.copy(trained.parent / "ratings.csv", tmp_path / "ratings.csv")
    if damage is not None:
        damage(run)
    return _invoke(*build(tmp_path, run))


@pytest.mark.parametrize(
    ("damage", "build", "exit_code", "fragments"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_user_errors_are_one_line_naming_the_file_or_flag(
    tmp_path: Path, trained: Path, damage, build, exit_code: int, fragments: tuple[str, ...]
) -> None:
    result = _run_case(tmp_path, trained, damage, build)
    assert result.exit_code == exit_code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in _plain(lines[0]), f"{fragment!r} not in {lines[0]!r}"


@pytest.mark.parametrize(
    ("damage", "build", "exit_code", "fragments"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_user_errors_with_json_are_one_error_object(
    tmp_path: Path, trained: Path, damage, build, exit_code: int, fragments: tuple[str, ...]
) -> None:
    result = _run_case(tmp_path, trained, damage, lambda d, r: [*build(d, r), "--json"])
    assert result.exit_code == exit_code, result.output
    payload = json.loads(result.stdout)  # the whole of stdout is one JSON document
    assert set(payload) == {"ok", "error"} and payload["ok"] is False
    error = payload["error"]
    assert set(error) == {"type", "message", "path", "flag", "findings"}
    for fragment in fragments:
        assert fragment in " ".join(error["message"].split())


def test_json_error_fields_name_the_flag_or_file(tmp_path: Path, trained: Path) -> None:
    bad_level = _run_case(
        tmp_path, trained, None,
        lambda d, r: ["recommend", r, "--user", "u1", "--confidence-level", "2", "--json"],
    )  # fmt: skip
    error = json.loads(bad_level.stdout)["error"]
    assert (error["type"], error["flag"], error["path"]) == (
        "UsageError",
        "--confidence-level",
        None,
    )
    shutil.rmtree(tmp_path / "run")
    damaged = _run_case(
        tmp_path,
        trained,
        lambda r: _truncate(r / "weights.safetensors", 100),
        lambda d, r: ["recommend", r, "--user", "u1", "--json"],
    )
    error = json.loads(damaged.stdout)["error"]
    assert (error["type"], error["path"]) == ("RunError", str(tmp_path / "run"))
    assert error["message"].startswith(f"{tmp_path / 'run'}: incomplete run (corrupt")
    assert "weights.safetensors" in error["message"]
    data = _invoke("data", "info", tmp_path / "nope.csv", "--json")
    error = json.loads(data.stdout)["error"]
    assert error["type"] == "DataError" and error["path"] == str(tmp_path / "nope.csv")
    assert [f["code"] for f in error["findings"]] == ["missing_path"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_permission_denied_names_the_file(tmp_path: Path) -> None:
    cfg = _write(tmp_path / "c.toml", "seed = 0\n")
    cfg.chmod(0)
    result = _invoke("train", cfg)
    assert result.exit_code == 1
    assert _plain(result.stderr) == f"error: {cfg}: Permission denied; check the file's permissions"


def test_an_os_error_is_reported_by_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mapping of an OSError (here permission denied, which root cannot provoke)."""
    from wager.config import RunConfig

    cfg = tmp_path / "c.toml"

    def denied(path: object) -> object:
        raise PermissionError(13, "Permission denied", str(cfg))

    monkeypatch.setattr(RunConfig, "load", denied)
    result = _invoke("train", cfg, "--json")
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert error["message"] == f"{cfg}: Permission denied; check the file's permissions"
    assert (error["type"], error["path"]) == ("PermissionError", str(cfg))


# ----------------------------------------------------------------------------- bugs


@pytest.mark.parametrize(
    "bug",
    [
        IndexError("index 7 is out of bounds"),
        TypeError("unsupported operand"),
        ValueError("operands could not be broadcast"),  # raised outside wager's own raise
    ],
    ids=["IndexError", "TypeError", "ValueError_from_a_library"],
)
def test_a_bug_keeps_its_traceback(
    tmp_path: Path, trained: Path, monkeypatch: pytest.MonkeyPatch, bug: Exception
) -> None:
    from wager.recommender import Recommender

    def broken(*args: object, **kwargs: object) -> object:
        raise bug

    monkeypatch.setattr(Recommender, "recommend", broken)
    result = _invoke("recommend", trained, "--user", "u1", "--json")
    assert result.exception is bug  # not turned into a one-line message


def test_every_command_reports_errors_in_one_place() -> None:
    commands = [*app.registered_commands, *data_app.registered_commands]
    assert len(commands) >= 7
    for command in commands:
        assert hasattr(command.callback, "__wrapped__"), command.name


# ----------------------------------------------------------------------------- help, version


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["train", "--help"], ("overrides [data] path in the config", "overrides [data] split")),
        (["evaluate", "--help"], ("overrides [data] path",)),
        (["recommend", "--help"], ("Level of the [low, high] interval, in (0, 1).",)),
    ],
)
def test_help_text_prints_as_written(args: list[str], fragments: tuple[str, ...]) -> None:
    result = _invoke(*args)
    assert result.exit_code == 0
    for fragment in fragments:
        assert fragment in _plain(result.stdout), fragment


def test_version() -> None:
    result = _invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"wager {version('wager')}\n"


def test_ctrl_c_exits_130_saying_nothing_was_saved(tmp_path: Path, monkeypatch) -> None:
    import wager.pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(wager.pipeline, "train_run", interrupted)
    cfg = tmp_path / "c.toml"
    cfg.write_text(rating_toml(tmp_path / "r.csv"))
    result = _invoke("train", cfg, "--out", tmp_path / "run")
    assert result.exit_code == 130
    assert "interrupted: nothing was saved" in _plain(result.output)
    assert not (tmp_path / "run").exists()
