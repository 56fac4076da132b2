"""``wager recommend``: ids that look like rich markup print as written, and ``--out`` picks
its format from the extension, refuses unsafe paths and writes whole or not at all.

One tiny ``biased_mf`` run is trained once per module on a CSV whose ids include ``[/]``
(which rich reads as "close the last style" and crashes on), ``[red]`` and ``[bold]x``.
The ``--json`` output of the same call is the reference each written file is checked
against.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner, Result

from conftest import rating_toml
from wager.cli import app

MARKUP_ITEMS = ("[/]", "[red]")
MARKUP_USER = "[bold]x"
N_ITEMS = 8  # i0..i5 plus the two markup ids


COLUMNS = [
    "user",
    "item",
    "rank",
    "score",
    "mean",
    "std",
    "low",
    "high",
    "confidence",
    "cold_start",
]


def _invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def _plain(text: str) -> str:
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli_recommend")
    rng = np.random.default_rng(0)
    items = [f"i{i}" for i in range(N_ITEMS - len(MARKUP_ITEMS))] + list(MARKUP_ITEMS)
    users = [f"u{u}" for u in range(30)] + [MARKUP_USER]
    rows = [
        (u, i, int(rng.integers(1, 6)))
        for u in users
        for i in rng.choice(items, size=4, replace=False)
    ]
    pd.DataFrame(rows, columns=["user_id", "item_id", "rating"]).to_csv(
        d / "ratings.csv", index=False
    )
    (d / "run.toml").write_text(rating_toml(d / "ratings.csv", extra="[ensemble]\nmembers = 2\n"))
    result = _invoke("train", d / "run.toml", "--out", d / "run", "--json")
    assert result.exit_code == 0, result.output
    return d / "run"


def _reference(run: Path, *users: str, k: int = N_ITEMS) -> pd.DataFrame:
    """The recommendations of ``--json`` (same run, users and k) as a frame."""
    args = [a for u in users for a in ("--user", u)]
    result = _invoke("recommend", run, *args, "-k", str(k), "--include-seen", "--json")
    assert result.exit_code == 0, result.output
    frame = pd.DataFrame(json.loads(result.stdout)["recommendations"])[COLUMNS]
    assert frame[["mean", "std", "low", "high"]].notna().all().all()  # an ensemble: a spread
    for col in (
        "score",
        "mean",
        "std",
        "low",
        "high",
        "confidence",
    ):  # JSON null -> NaN, as in files
        frame[col] = pd.to_numeric(frame[col])
    return frame


# ----------------------------------------------------------------------------- markup


def test_markup_ids_print_as_written(run: Path) -> None:
    # every item, seen ones included, so both markup items are listed for the markup user
    result = _invoke("recommend", run, "--user", MARKUP_USER, "-k", N_ITEMS, "--include-seen")
    assert result.exit_code == 0, result.output
    assert result.exception is None
    rows = [line for line in result.stdout.splitlines() if MARKUP_USER in line]
    assert len(rows) == N_ITEMS  # the user id shows on each row, brackets and all
    for item in MARKUP_ITEMS:
        assert sum(item in line for line in rows) == 1, item
    assert "\x1b[1m" not in result.stdout  # "[bold]" was not read as a style


def test_markup_ids_in_a_cold_start_notice(run: Path) -> None:
    result = _invoke("recommend", run, "--user", "[/]new[i]", "-k", "2")
    assert result.exit_code == 0, result.output
    assert "user '[/]new[i]' was not seen in training" in _plain(result.stderr)


# ----------------------------------------------------------------------------- --out


def _read(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype={"user": str, "item": str})
    return pd.read_json(path, lines=True, dtype={"user": str, "item": str})


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_out_format_follows_the_extension(run: Path, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"recs{suffix}"
    users = ("u1", MARKUP_USER, "nobody")
    args = [a for u in users for a in ("--user", u)]
    result = _invoke("recommend", run, *args, "-k", N_ITEMS, "--include-seen", "--out", out)
    assert result.exit_code == 0, result.output
    assert f"{3 * N_ITEMS} recommendations for 3 users written to {out}" in _plain(result.stdout)
    head = out.read_bytes()[:4]
    if suffix == ".parquet":
        assert head == b"PAR1"
    elif suffix == ".csv":
        assert out.read_text().splitlines()[0] == ",".join(COLUMNS)
    else:  # one JSON object a line
        lines = out.read_text().splitlines()
        assert len(lines) == 3 * N_ITEMS and json.loads(lines[0])["user"] == "u1"
    written = _read(out)[COLUMNS]
    expected = _reference(run, *users)
    # the scores are float32: CSV and JSON hold each one's shortest decimal, which reads back
    # as a float64 within float32 precision (2**-24 ~ 6e-8 relative) of the float32 value
    pd.testing.assert_frame_equal(
        written.reset_index(drop=True),
        expected.reset_index(drop=True),
        check_dtype=False,
        rtol=1e-7,
        atol=0,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temporary file left


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
@pytest.mark.parametrize("policy", [[], ["--policy", "ucb", "--beta", "1"]])
def test_all_users_in_chunks_writes_the_same_table(
    run: Path, tmp_path: Path, suffix: str, policy: list[str]
) -> None:
    """--chunk-users 4 streams 31 users in 8 chunks (Parquet: 8 row groups): the same rows
    as one chunk, the cold-start column included, and the count reported."""
    whole, chunked = tmp_path / f"whole{suffix}", tmp_path / f"chunked{suffix}"
    for out, extra in ((whole, []), (chunked, ["--chunk-users", "4"])):
        result = _invoke("recommend", run, "--all-users", "-k", "3", *policy, "--out", out,
                         "--json", *extra)  # fmt: skip
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["n_users"] == 31
    if suffix == ".parquet":
        assert pq.ParquetFile(chunked).num_row_groups == 8
        assert pq.ParquetFile(whole).num_row_groups == 1
    a, b = _read(whole), _read(chunked)
    assert len(a) == 31 * 3 and "cold_start" in a.columns
    pd.testing.assert_frame_equal(a, b)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([whole.name, chunked.name])


def test_out_overwrite_replaces_an_existing_file(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "recs.csv"
    out.write_text("keep me\n")
    refused = _invoke("recommend", run, "--user", "u1", "--out", out)
    assert refused.exit_code == 2
    assert f"--out {out}: already exists; pass --overwrite to replace it" in _plain(refused.stderr)
    assert out.read_text() == "keep me\n"
    result = _invoke("recommend", run, "--user", "u1", "-k", 3, "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert list(pd.read_csv(out)["rank"]) == [1, 2, 3]


@pytest.mark.parametrize(
    ("where", "fragment"),
    [
        ("run/recs.parquet", "inside the run folder"),  # the run being read
        ("run/config.toml", "'.toml' is not a format wager writes"),
        ("other_run/sub/recs.csv", "inside the run folder"),  # any run folder
        ("recs.json", "'.json' is not a format wager writes; end it in .parquet, .csv, .jsonl"),
        ("adir", "exists and is not a folder of recommendations wager wrote"),
        ("adir.csv", "is a directory"),
    ],
)
def test_out_refusals_leave_everything_as_it_was(
    run: Path, tmp_path: Path, where: str, fragment: str
) -> None:
    local_run = tmp_path / "run"
    shutil.copytree(run, local_run)
    shutil.copytree(run, tmp_path / "other_run")
    (tmp_path / "adir.csv").mkdir()
    (tmp_path / "adir").mkdir()
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    result = _invoke("recommend", local_run, "--user", "u1", "--out", tmp_path / where)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    message = _plain(result.stderr)
    assert message.startswith(f"error: --out {tmp_path / where}: ") and fragment in message
    assert len(result.stderr.strip().splitlines()) == 1
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before


@pytest.mark.parametrize("existing", [False, True])
def test_interrupted_write_leaves_no_partial_file(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    out = tmp_path / "recs.parquet"
    if existing:
        out.write_bytes(b"the previous file")

    def half_write(self: pq.ParquetWriter, *args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")  # the file is open, its header written

    monkeypatch.setattr(pq.ParquetWriter, "write_table", half_write)
    args = ("recommend", run, "--user", "u1", "--out", out)
    result = _invoke(*args, *(["--overwrite"] if existing else []))
    assert result.exit_code == 1
    assert _plain(result.stderr) == f"error: {out}: No space left on device"
    if existing:
        assert out.read_bytes() == b"the previous file"
        assert [p.name for p in tmp_path.iterdir()] == [out.name]
    else:
        assert list(tmp_path.iterdir()) == []
