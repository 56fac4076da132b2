"""``wager abtest report``: per-arm CTRs of an experiment from the service's event store, each
arm against the control (impression-level and user-level tests) and the sample-ratio check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from wager.cli.common import (
    JsonFlag,
    _flag_error,
    _WagerTyper,
    app,
    check_event_db,
    console,
    print_json,
)
from wager.cli.render import _table, _text

abtest_app = _WagerTyper(
    help="Read A/B experiments from the event store.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(abtest_app, name="abtest")


@abtest_app.command("report")
def abtest_report_command(
    db: Annotated[
        str, typer.Option("--db", help="Event store URL (sqlite:///... or postgresql://...).")
    ],
    experiment: Annotated[str, typer.Option("--experiment", help="The experiment's name.")],
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="The experiment TOML: its shares drive the sample-ratio check."
        ),
    ] = None,
    control: Annotated[
        str | None, typer.Option("--control", help="Control arm (default: 'control' or the first).")
    ] = None,
    level: Annotated[float, typer.Option("--level", help="Confidence level, in (0, 1).")] = 0.95,
    as_json: JsonFlag = False,
) -> None:
    """Per-arm impressions, users, CTR with its interval; each arm against the control."""
    from wager._optional import require
    from wager.serving.experiments import Experiment, abtest_report

    if not 0 < level < 1:
        raise _flag_error("--level", f"--level must be in (0, 1), e.g. 0.95, got {level}")
    shares = None
    if config is not None:
        try:
            exp = Experiment.load(config)
        except ValueError as exc:
            raise _flag_error("--config", f"--config: {exc}") from None
        if exp.name != experiment:
            raise _flag_error(
                "--config", f"--config {config} is experiment {exp.name!r}, not {experiment!r}"
            )
        shares = {a.name: a.share for a in exp.arms}
    require("sqlalchemy", "serve", "wager abtest report")
    check_event_db(db)
    from wager.serving.store import EventStore

    with EventStore(db, create=False) as store:  # a reader: creates and migrates nothing
        served = store.served_with_feedback()
    report = abtest_report(served, experiment, control=control, shares=shares, level=level)
    if as_json:
        print_json(report)
        return
    _print(report)


def _print(report: dict[str, Any]) -> None:
    pct = f"{report['level']:.0%}"
    table = _table(
        f"experiment {report['experiment']} (control: {report['control']})",
        ["arm", "users", "impressions", "clicks", "ctr", f"{pct} interval"],
    )
    for name, a in report["arms"].items():
        table.add_row(
            _text(name), str(a["users"]), str(a["impressions"]), str(a["clicks"]),
            f"{a['ctr']:.4f}", f"[{a['low']:.4f}, {a['high']:.4f}]",
        )  # fmt: skip
    console.print(table)
    _print_calibration(report)
    for name, c in report["comparisons"].items():
        u, i = c["user_level"], c["impression_level"]
        console.print(
            _text(
                f"{name} - {report['control']}: {u['difference']:+.4f} "
                f"[{u['low']:+.4f}, {u['high']:+.4f}], p = {u['p_value']:.3g} (users as units); "
                f"impression-level p = {i['p_value']:.3g}, lift {i['relative_lift']:+.1%}"
            )
        )
    srm = report["sample_ratio"]
    if srm is None:
        console.print("sample ratio: not checked (pass --config with the experiment's shares)")
    else:
        verdict = "MISMATCH: the assignment is broken" if srm["mismatch"] else "ok"
        console.print(f"sample ratio: chi2 {srm['chi2']:.2f}, p = {srm['p_value']:.3g}: {verdict}")


def _print_calibration(report: dict[str, Any]) -> None:
    """Online calibration: per arm and slot, predicted CTR next to the observed one."""
    pct = f"{report['level']:.0%}"
    table = _table(
        "online calibration (top = rank 1, where a position-1 prediction meets its clicks)",
        [
            "arm",
            "slot",
            "impressions",
            "predicted ctr",
            "model's own",
            "observed ctr",
            f"{pct} interval",
            "inside",
        ],
    )
    for name, a in report["arms"].items():
        for slot, c in a["calibration"].items():
            table.add_row(
                _text(name), slot, str(c["impressions"]), f"{c['predicted_ctr']:.4f}",
                f"{c['model_predicted_ctr']:.4f}", f"{c['observed_ctr']:.4f}",
                f"[{c['low']:.4f}, {c['high']:.4f}]", "yes" if c["within"] else "NO",
            )  # fmt: skip
    console.print(table)
