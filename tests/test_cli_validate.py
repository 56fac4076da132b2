"""Bad inputs through the real ``wager data validate`` command, paired with the expected message.

Each case writes a tiny table (CSV, Parquet or JSON lines) into ``tmp_path``, runs the
CLI, and checks the exit status (1 when any error is found, 0 for warnings alone) and
that the output names the problem where it is: the file, the column and the 1-based
data row (row 1 = the first line after the header).
"""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from wager import cli
from wager.cli import app

BASE = ("--format", "table", "--user-col", "user_id", "--item-col", "item_id")
RATING = (*BASE, "--label-col", "rating")
CTR = (
    "--format", "ctr", "--user-col", "segment", "--item-col", "item_id",
    "--impressions-col", "imps", "--clicks-col", "clicks",
)  # fmt: skip

CLEAN = "user_id,item_id,rating\n1,10,4\n1,11,3\n2,10,5\n2,11,2\n3,10,1\n"
ITEMS = "item_id,genres,price\n10,Action|Comedy,1.5\n11,Drama,2.0\n"

HAS_PROPENSITY_FLAG = "propensity_col" in inspect.signature(cli.data_validate).parameters


@dataclass(frozen=True)
class Case:
    """One CLI run: files to write, the path argument, flags, and what must come out."""

    id: str
    files: dict[str, str | pd.DataFrame]
    target: str
    args: tuple[str, ...]
    exit_code: int
    expect: tuple[str, ...]
    absent: tuple[str, ...] = ()
    marks: tuple[pytest.MarkDecorator, ...] = field(default=())


CASES = [
    # --- the file itself -------------------------------------------------------------------
    Case("missing_file", {}, "nope.csv", RATING, 1,
         ("nope.csv", "no such file or directory")),
    Case("missing_directory", {}, "nodir/ratings.csv", RATING, 1,
         ("nodir/ratings.csv", "the directory 'nodir' does not exist")),
    Case("missing_directory_auto", {}, "nodir", ("--format", "auto"), 1,
         ("nodir", "no such file or directory")),
    Case("directory_not_file", {"d/notes.txt": "x\n"}, "d", RATING, 1,
         ("is a directory (holding notes.txt)", "a table file was expected")),
    Case("unknown_extension", {"ratings.xlsx": "not a table"}, "ratings.xlsx", RATING, 1,
         ("ratings.xlsx", "extension '.xlsx'", ".csv, .tsv, .txt, .parquet")),
    Case("corrupt_parquet", {"ratings.parquet": "this is not parquet"}, "ratings.parquet",
         RATING, 1, ("ratings.parquet", "cannot be read as Parquet")),
    Case("ragged_csv_line", {"r.csv": "user_id,item_id,rating\n1,10,4\n2,11,5\n3,12,4,9\n"},
         "r.csv", RATING, 1,
         ("r.csv, row 3", "line 4 of the file", "Expected 3 fields in line 4, saw 4")),
    Case("bad_json_line",
         {"r.jsonl": '{"user_id": 1, "item_id": 10, "rating": 4}\n{"user_id": 2,\n'},
         "r.jsonl", RATING, 1, ("r.jsonl, row 2", "line 2 of the file is not a JSON object")),
    Case("empty_table", {"r.csv": "user_id,item_id,rating\n"}, "r.csv", RATING, 1,
         ("r.csv", "the table has no data rows")),
    # --- columns ---------------------------------------------------------------------------
    Case("missing_column", {"r.csv": CLEAN}, "r.csv", (*BASE, "--label-col", "score"), 1,
         ("column 'score'", "--label-col", "columns present: user_id, item_id, rating"),
         absent=("Did you mean",)),
    Case("misspelt_label_column", {"r.csv": CLEAN}, "r.csv", (*BASE, "--label-col", "ratng"), 1,
         ("column 'ratng'", "Did you mean 'rating'?", "--label-col")),
    Case("misspelt_user_column", {"r.csv": CLEAN}, "r.csv",
         ("--format", "table", "--user-col", "userid", "--item-col", "item_id"), 1,
         ("column 'userid'", "Did you mean 'user_id'?", "--user-col")),
    # --- ids and labels --------------------------------------------------------------------
    Case("nan_user_id", {"r.csv": "user_id,item_id,rating\n1,10,4\n,11,3\n2,10,5\n"},
         "r.csv", RATING, 1, ("column 'user_id', row 2", "1 of 3 user ids is missing")),
    Case("nan_label", {"r.csv": "user_id,item_id,rating\n1,10,4\n1,11,3\n2,10,\n"},
         "r.csv", RATING, 1, ("column 'rating', row 3", "1 of 3 label values is missing")),
    Case("inf_label_parquet",
         {"r.parquet": pd.DataFrame({"user_id": [1, 2, 3], "item_id": [10, 11, 12],
                                     "rating": [4.0, np.inf, 3.0]})},
         "r.parquet", RATING, 1, ("r.parquet, column 'rating', row 2", "is infinite: inf")),
    Case("non_numeric_label", {"r.csv": "user_id,item_id,rating\n1,10,4\n2,11,five\n"},
         "r.csv", RATING, 1, ("column 'rating', row 2", "not a number: 'five'")),
    Case("non_numeric_label_jsonl",
         {"r.jsonl": pd.DataFrame({"user_id": [1, 2, 3], "item_id": [10, 11, 12],
                                   "rating": [4, 5, "good"]})},
         "r.jsonl", RATING, 1, ("r.jsonl, column 'rating', row 3", "not a number: 'good'")),
    Case("rating_outside_scale",
         {"r.csv": "user_id,item_id,rating\n1,10,4\n1,11,3\n2,10,5\n2,11,7\n"},
         "r.csv", (*RATING, "--rating-min", "1", "--rating-max", "5"), 1,
         ("column 'rating', row 4", "1 of 4 ratings is outside the declared scale [1, 5]: 7")),
    Case("click_not_binary", {"r.csv": "user_id,item_id,clicked\n1,10,0\n1,11,2\n2,10,1\n"},
         "r.csv", (*BASE, "--label-col", "clicked", "--label-kind", "click"), 1,
         ("column 'clicked', row 2", "1 of 3 click labels is not 0 or 1: 2")),
    Case("ctr_label_outside_unit_interval",
         {"r.parquet": pd.DataFrame({"user_id": [1, 2], "item_id": [10, 11],
                                     "ctr": [0.25, 1.5]})},
         "r.parquet", (*BASE, "--label-col", "ctr", "--label-kind", "ctr"), 1,
         ("column 'ctr', row 2", "outside [0, 1]: 1.5")),
    Case("several_errors_at_once",
         {"r.csv": "user_id,item_id,rating\n1,10,\n1,11,3\n2,10,9\n"},
         "r.csv", (*RATING, "--rating-min", "1", "--rating-max", "5"), 1,
         ("column 'rating', row 1", "column 'rating', row 3", "2 errors")),
    # --- weights, propensities, timestamps --------------------------------------------------
    Case("negative_weight",
         {"r.csv": "user_id,item_id,rating,w\n1,10,4,1\n1,11,3,0.5\n2,10,5,-1\n"}, "r.csv",
         (*RATING, "--weight-col", "w"), 1,
         ("column 'w', row 3", "1 of 3 weights is negative: -1")),
    Case("propensity_out_of_range",
         {"r.csv": "user_id,item_id,rating,p\n1,10,1,0.5\n1,11,0,0\n2,10,1,1.2\n"},
         "r.csv", (*BASE, "--label-col", "rating", "--label-kind", "click",
                   "--propensity-col", "p"), 1,
         ("column 'p', rows 2, 3", "2 of 3 propensities are outside (0, 1]")),
    Case("unparseable_timestamp",
         {"r.csv": "user_id,item_id,rating,ts\n1,10,4,2021-01-02\n1,11,3,someday\n"},
         "r.csv", (*RATING, "--timestamp-col", "ts"), 1,
         ("column 'ts', row 2", "neither a number nor a date: 'someday'")),
    # --- aggregated CTR counts --------------------------------------------------------------
    Case("clicks_exceed_impressions",
         {"c.csv": "segment,item_id,imps,clicks\na,1,10,2\na,2,5,7\nb,1,4,0\n"},
         "c.csv", CTR, 1, ("column 'clicks', row 2", "more clicks than impressions (7 > 5")),
    Case("negative_count",
         {"c.csv": "segment,item_id,imps,clicks\na,1,10,2\na,2,5,1\nb,1,-3,0\n"},
         "c.csv", CTR, 1, ("column 'imps', row 3", "1 of 3 impression counts is negative: -3")),
    Case("non_integer_count_parquet",
         {"c.parquet": pd.DataFrame({"segment": ["a", "b"], "item_id": [1, 2],
                                     "imps": [10.0, 4.0], "clicks": [1.5, 0.0]})},
         "c.parquet", CTR, 1, ("column 'clicks', row 1", "is not a whole number: 1.5")),
    Case("ctr_roles_missing", {"c.csv": "segment,item_id,imps,clicks\na,1,10,2\n"}, "c.csv",
         ("--format", "ctr", "--user-col", "segment"), 1,
         ("needs an impression count column and a click count column",
          "--impressions-col", "--clicks-col")),
    Case("empty_after_filtering",
         {"c.csv": "segment,item_id,imps,clicks\na,1,0,0\nb,2,0,0\n"},
         "c.csv", CTR, 1,
         ("no rows are left after filtering", "dropped 2 rows",
          "zero impressions in column 'imps'")),
    # --- feature tables -------------------------------------------------------------------
    Case("duplicate_feature_ids",
         {"r.csv": CLEAN,
          "items.csv": "item_id,genres\n10,Action\n11,Drama\n11,Comedy\n"},
         "r.csv", (*RATING, "--item-features", "items.csv"), 1,
         ("items.csv, column 'item_id', rows 2, 3", "occur more than once: 11")),
    # --- not errors: exit 0 ---------------------------------------------------------------
    Case("clean_table", {"r.csv": CLEAN}, "r.csv",
         (*RATING, "--rating-min", "1", "--rating-max", "5"), 0, ("OK",),
         absent=("error", "warning")),
    Case("ids_absent_from_feature_table",
         {"r.csv": CLEAN + "3,12,4\n", "items.csv": ITEMS}, "r.csv",
         (*RATING, "--item-features", "items.csv"), 0,
         ("warning", "1 of 3 item ids in the interactions has no row in items.csv (e.g. 12)",
          "out-of-vocabulary", "OK (1 warning)")),
    Case("zero_impression_rows_dropped",
         {"c.csv": "segment,item_id,imps,clicks\na,1,10,2\na,2,0,0\nb,1,4,1\n"},
         "c.csv", CTR, 0, ("c.csv, row 2: dropped 1 rows", "dropped 1 row in all", "OK")),
    Case("split_leaves_users_only_in_test",
         # five users with one row each: whichever row the random split puts in test,
         # its user occurs only in test
         {"r.csv": "user_id,item_id,rating\n1,10,4\n2,10,3\n3,10,5\n4,11,2\n5,11,1\n"},
         "r.csv", (*RATING, "--split", "random", "--seed", "3"), 0,
         ("warning", "1 users appear only in test", "split 'random': 4 train rows, 1 test rows",
          "OK (1 warning)")),
]  # fmt: skip


def _write(path: Path, content: str | pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content)
    elif path.suffix == ".parquet":
        content.to_parquet(path, index=False)
    elif path.suffix == ".jsonl":
        path.write_text(
            "".join(json.dumps(rec) + "\n" for rec in content.to_dict(orient="records"))
        )
    else:
        content.to_csv(path, index=False)


def _plain(text: str) -> str:
    """Output without ANSI colour codes, whitespace runs collapsed."""
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())


def _params() -> list:
    params = []
    for case in CASES:
        marks = list(case.marks)
        if "--propensity-col" in case.args and not HAS_PROPENSITY_FLAG:
            marks.append(
                pytest.mark.skip(
                    reason="`wager data validate` has no --propensity-col flag yet (cli.py); "
                    "the check itself is tested in tests/data/test_validate.py"
                )
            )
        params.append(pytest.param(case, id=case.id, marks=marks))
    return params


@pytest.mark.parametrize("case", _params())
def test_validate_bad_inputs(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, content in case.files.items():
        _write(tmp_path / name, content)
    monkeypatch.chdir(tmp_path)  # messages then show the short relative paths
    result = CliRunner().invoke(app, ["data", "validate", case.target, *case.args])
    output = _plain(result.output)
    assert result.exit_code == case.exit_code, output
    assert result.exception is None or isinstance(result.exception, SystemExit), output
    for fragment in case.expect:
        assert fragment in output, f"{fragment!r} not in output:\n{output}"
    for fragment in case.absent:
        assert fragment not in output, f"{fragment!r} unexpectedly in output:\n{output}"
    if case.exit_code == 1:
        # errors go to stderr, in the form "error: SOURCE, column 'C', row R: ..."
        assert _plain(result.stderr).startswith("error: ")


def test_case_table_covers_both_outcomes_and_formats() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) >= 20
    assert sum(c.exit_code == 0 for c in CASES) >= 3
    suffixes = {Path(name).suffix for c in CASES for name in c.files}
    assert {".csv", ".parquet", ".jsonl"} <= suffixes


def test_validate_json_output_lists_findings(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("user_id,item_id,rating\n1,10,4\n2,11,five\n3,12,\n")
    result = CliRunner().invoke(app, ["data", "validate", str(path), *RATING, "--json"])
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert payload["ok"] is False
    # 'five' at 0-based position 1, the empty label at position 2
    assert [(f["code"], f["column"], f["rows"]) for f in payload["errors"]] == [
        ("non_numeric", "rating", [1]),
        ("missing_value", "rating", [2]),
    ]
