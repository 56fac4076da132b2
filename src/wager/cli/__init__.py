"""The ``wager`` command line: thin; every flag maps onto a config or schema field.

Every command that reports results prints a readable rich table, or JSON with ``--json``.
This package is the only place that renders for a terminal: library code returns data
(dicts, reports, frames) and raises named errors; everything here that came from data
(ids, titles, file names, finding messages) is printed as plain text, never read as rich
markup, and help text is printed as written (``rich_markup_mode=None``).

The commands live by concern: :mod:`wager.cli.common` (the app, consoles, ``--json``
output and error reporting), :mod:`wager.cli.render` (rich tables), :mod:`wager.cli.data`
(``wager data ...``), :mod:`wager.cli.runs` (quickstart, train, evaluate, calibrate,
recommend), :mod:`wager.cli.simulate` (simulate), :mod:`wager.cli.ope` (ope),
:mod:`wager.cli.serve` (serve), :mod:`wager.cli.export_logs` (export-logs) and
:mod:`wager.cli.tune` (tune). Importing
this package registers every command on :data:`app`; nothing here imports torch, pandas or
NumPy (each command imports what it needs when it runs).
"""

from __future__ import annotations

from wager.cli import abtest, data, export_logs, ope, runs, serve, simulate, tune
from wager.cli.common import (
    CliError,
    JsonFlag,
    app,
    console,
    data_app,
    err_console,
    main,
    print_json,
)
from wager.cli.data import data_download, data_info, data_validate
from wager.cli.render import render_description, render_report
from wager.cli.runs import OUT_FORMATS, calibrate, evaluate, quickstart, recommend, train
from wager.cli.simulate import simulate_command

__all__ = [
    "OUT_FORMATS",
    "CliError",
    "JsonFlag",
    "abtest",
    "app",
    "calibrate",
    "console",
    "data",
    "data_app",
    "data_download",
    "data_info",
    "data_validate",
    "err_console",
    "evaluate",
    "export_logs",
    "main",
    "ope",
    "print_json",
    "quickstart",
    "recommend",
    "render_description",
    "render_report",
    "runs",
    "serve",
    "simulate",
    "simulate_command",
    "train",
    "tune",
]
