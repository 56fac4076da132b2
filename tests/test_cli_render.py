"""Terminal rendering, which lives in ``wager.cli`` only: validation reports and dataset
summaries print every value from data (ids, titles, messages) as written, never as rich
markup."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from wager.cli import app, render_description, render_report
from wager.data.dataset import Dataset
from wager.data.info import describe
from wager.data.schema import Categorical, MultiCategorical, Numeric, Schema, Text
from wager.errors import ValidationReport, make_finding


def _consoles() -> tuple[Console, Console, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return (
        Console(file=out, width=60, color_system=None),
        Console(file=err, width=60, color_system=None),
        out,
        err,
    )


# ----------------------------------------------------------------------------- render_report


def test_render_report_routes_and_summarises() -> None:
    report = ValidationReport()
    report.add(make_finding("error", "x", "labels outside [0, 1]", source="a.csv", column="ctr",
                            rows=[2]))  # fmt: skip
    report.add(make_finding("error", "y", "second", source="a.csv"))
    report.add(make_finding("warning", "z", "careful [bold]", source="a.csv"))
    report.drop("zero impressions", 3, source="a.csv")
    console, err_console, out, err = _consoles()
    render_report(report, console, err_console)
    # long lines are not wrapped, and brackets are printed, not read as markup
    assert err.getvalue().splitlines() == [
        "error: a.csv, column 'ctr', row 3: labels outside [0, 1]",
        "error: a.csv: second",
    ]
    assert out.getvalue().splitlines() == [
        "warning: a.csv: careful [bold]",
        "info: a.csv: dropped 3 rows: zero impressions",
        "dropped 3 rows in all (zero impressions: 3)",
        "2 errors, 1 warning",
    ]


def test_render_report_ok() -> None:
    console, err_console, out, err = _consoles()
    render_report(ValidationReport(), console, err_console)
    assert (out.getvalue(), err.getvalue()) == ("OK\n", "")


@pytest.mark.parametrize("n_warnings, expected", [(1, "OK (1 warning)"), (2, "OK (2 warnings)")])
def test_render_report_ok_with_warnings(n_warnings: int, expected: str) -> None:
    report = ValidationReport()
    for _ in range(n_warnings):
        report.add(make_finding("warning", "w", "w"))
    console, err_console, out, _ = _consoles()
    render_report(report, console, err_console)
    assert out.getvalue().splitlines()[-1] == expected


def test_render_report_closing_tag_in_a_message_does_not_crash() -> None:
    report = ValidationReport()
    report.add(make_finding("error", "x", "item '[/]' is unknown", source="[red]a.csv"))
    console, err_console, _, err = _consoles()
    render_report(report, console, err_console)
    assert err.getvalue() == "error: [red]a.csv: item '[/]' is unknown\n"


# ----------------------------------------------------------------------------- render_description


def _markup_dataset() -> Dataset:
    inter = pd.DataFrame(
        {
            "user_id": ["[bold]x", "[bold]x", "u2", "u3"],
            "item_id": ["[/]", "i20", "[/]", "i30"],
            "rating": [5.0, 3.0, 4.0, 1.0],
        }
    )
    users = pd.DataFrame({"user_id": ["[bold]x", "u2", "u3"], "age": [24, 53, 23],
                          "gender": ["[red]", "F", "[red]"]})  # fmt: skip
    items = pd.DataFrame(
        {
            "item_id": ["[/]", "i20", "i30"],
            "title": ["[link=x]A[/link]", "B", "C"],
            "genres": ["[i]|Drama", "Drama", ""],
        }
    )
    schema = Schema(
        label="rating",
        label_kind="rating",
        rating_range=(1, 5),
        user_features=(Numeric("age"), Categorical("gender")),
        item_features=(Text("title"), MultiCategorical("genres")),
    )
    report = ValidationReport()
    report.add(make_finding("warning", "w", "id '[/]' looks odd", source="[b]ratings.csv"))
    return Dataset(inter, schema, users, items, source="[dim]tiny", report=report)


def test_render_description_prints_data_as_written() -> None:
    console = Console(record=True, width=200, color_system=None)
    render_description(describe(_markup_dataset()), console)
    text = console.export_text()
    for needle in (
        "Dataset [dim]tiny",
        "Label 'rating' (rating)",
        "3.25",  # mean rating (5 + 3 + 4 + 1) / 4
        "[red] (2)",  # the top gender value and its count
        "[i] (1)",  # a genre
        "[b]ratings.csv: id '[/]' looks odd",
        "multi_categorical",
    ):
        assert needle in text, needle


def test_data_info_command_prints_markup_names_as_written(tmp_path: Path) -> None:
    path = tmp_path / "[red]r[i].csv"
    path.write_text("user_id,item_id,rating\n[bold]x,[/],4\n[bold]x,i2,3\nu2,[/],5\n")
    args = ["data", "info", str(path), "--format", "table", "--label-col", "rating"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    text = "".join(re.sub(r"\x1b\[[0-9;]*m", "", result.stdout).split())  # titles may wrap
    assert "[red]r[i].csv" in text
    assert "Label'rating'(rating)" in text
