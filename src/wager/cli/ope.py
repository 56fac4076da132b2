"""``wager ope``: off-policy evaluation of a policy from logged feedback.

Two ways to name the policy to evaluate:

- ``--policy-logs OTHER``: the (context-free) policy that wrote another log of the same
  format; its action distribution per position comes from OTHER's propensities
  (:func:`~wager.evaluation.ope.context_free_distribution`), and OTHER's on-policy value
  (mean reward) is printed beside the estimates as the check;
- ``--policy NAME --run RUN``: a wager policy (``--beta`` for UCB) acting on a trained run.

Logs of ``wager serve`` (``--format wager``): ``--arm`` keeps one experiment arm (the
logging policy's), ``--positions 1`` the top position only. The service logs each
position's propensity given the earlier positions, the estimators divide by the marginal
probability at the position, and the two agree at position 1 (or for deterministic logging
policies): so a log of a stochastic slate policy (epsilon-greedy, UCB with an epsilon floor)
is estimated with ``--positions 1``, the estimate then being the evaluated policy's CTR at
the top position.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from wager.cli.common import (
    JsonFlag,
    _flag_error,
    _load_run,
    _strict,
    app,
    check_out_folder,
    console,
    print_json,
)
from wager.cli.render import _table, _text

if TYPE_CHECKING:
    import numpy as np

    from wager.data.logged import LoggedFeedback

OPE_FORMATS = ("obd", "wager")
"""Log formats of ``--format``: an Open Bandit Dataset policy folder, or the Parquet file of
``wager export-logs``."""


def _load_logs(
    path: Path,
    fmt: str,
    campaign: str | None,
    flag: str,
    select: tuple[str | None, int | None] = (None, None),
) -> LoggedFeedback:
    from wager.data.loaders.obd import load_obd_feedback

    if fmt not in OPE_FORMATS:
        raise _flag_error(
            "--format", f"--format {fmt!r} is not supported; use one of {OPE_FORMATS}"
        )
    if not path.exists():
        raise _flag_error(flag, f"{flag} {path}: no such file or directory")
    if fmt == "wager":
        from wager.data.loaders.event_log import load_event_log

        if campaign is not None:
            raise _flag_error(
                "--campaign", "--campaign is for --format obd; leave it out with --format wager"
            )
        return load_event_log(path, arm=select[0], positions=select[1])
    for name, value in zip(("--arm", "--positions"), select, strict=True):
        if value is not None:
            raise _flag_error(name, f"{name} is for --format wager; leave it out with obd logs")
    return load_obd_feedback(path, campaign)


def _evaluation_distribution(
    logs: LoggedFeedback,
    other: LoggedFeedback | None,
    policy: str | None,
    beta: float | None,
    run: Path | None,
    seed: int,
) -> np.ndarray:
    """The evaluation policy's (n, n_actions, n_positions) distribution from the flags."""
    from wager.evaluation.ope import context_free_distribution

    if other is not None:
        if list(map(str, other.item_ids)) != list(map(str, logs.item_ids)):
            raise _flag_error(
                "--policy-logs",
                f"--policy-logs {other.source} has another action space than --logs "
                f"{logs.source} ({other.n_actions} vs {logs.n_actions} items): pass logs of "
                "the same campaign",
            )
        return context_free_distribution(other, logs.n_rounds)
    if run is None:
        raise _flag_error("--run", "--policy needs --run RUN (a run folder of `wager train`)")
    from wager.pipeline import wager_policy_distribution
    from wager.policies import policy_from_name

    name = str(policy)  # --policy or --policy-logs is given (checked before)
    try:
        chosen = policy_from_name(name, beta=beta)
    except ValueError as exc:
        flag = "--beta" if "beta" in str(exc) else "--policy"
        raise _flag_error(flag, f"--policy {name}: {exc}") from exc
    return wager_policy_distribution(_load_run(run), logs, chosen, seed=seed)


def _render(result: dict[str, Any], title: str) -> None:
    level = result["confidence_level"]
    truth = result["on_policy"]
    table = _table(title, ["estimator", "value", f"{level:.0%} CI", "rel. error", "ESS"])
    for name, e in result["estimates"].items():
        rel = f"{e['relative_error']:.3f}" if "relative_error" in e else "-"
        table.add_row(
            _text(name),
            _text(f"{e['value']:.5f}"),
            _text(f"[{e['low']:.5f}, {e['high']:.5f}]"),
            _text(rel),
            _text(f"{e['ess']:.0f}"),
        )
    console.print(table)
    if truth is not None:
        console.print(_text(f"on-policy value of the evaluated policy's own log: {truth:.5f}"))
    if "plot" in result:
        console.print(_text(f"plot: {result['plot']}"))


ArmFlag = Annotated[
    str | None,
    typer.Option("--arm", help="--format wager: only this experiment arm's impressions."),
]
PositionsFlag = Annotated[
    int | None,
    typer.Option(
        "--positions",
        help="--format wager: only ranks 1..N (1 for stochastic slate logs: the "
        "estimators need marginal propensities, logged exactly at rank 1).",
    ),
]


def _check_numbers(
    members: int, positions: int | None, folds: int, n_bootstrap: int, confidence_level: float
) -> None:
    """The numeric flags of ``wager ope``, each error naming its flag."""
    if members < 2:
        raise _flag_error(
            "--members",
            f"--members {members} must be >= 2: the reward model's interval comes from the "
            "spread of its members",
        )
    if positions is not None and positions < 1:
        raise _flag_error("--positions", f"--positions {positions} must be >= 1")
    if folds < 2:
        raise _flag_error("--folds", f"--folds {folds} must be >= 2 (cross-fitting)")
    if n_bootstrap < 1:
        raise _flag_error("--bootstrap", f"--bootstrap {n_bootstrap} must be >= 1")
    if not 0 < confidence_level < 1:
        raise _flag_error(
            "--confidence-level", f"--confidence-level {confidence_level} must be in (0, 1)"
        )


@app.command("ope")
def ope(
    logs: Annotated[Path, typer.Option("--logs", help="Logged feedback to estimate from.")],
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="Log format: obd, or wager (`wager export-logs`).")
    ] = "obd",
    policy_logs: Annotated[
        Path | None,
        typer.Option(
            "--policy-logs", help="Evaluate the (context-free) policy that wrote these logs."
        ),
    ] = None,
    policy: Annotated[
        str | None, typer.Option("--policy", help="Evaluate a wager policy (with --run).")
    ] = None,
    beta: Annotated[float | None, typer.Option("--beta", help="UCB's beta (--policy).")] = None,
    run: Annotated[
        Path | None, typer.Option("--run", help="Trained run the --policy acts on.")
    ] = None,
    campaign: Annotated[
        str | None, typer.Option("--campaign", help="OBD campaign (men, women, all).")
    ] = None,
    members: Annotated[
        int,
        typer.Option(
            "--members",
            help="Reward-model ensemble members (>= 2: their spread is the model's uncertainty).",
        ),
    ] = 5,
    folds: Annotated[int, typer.Option("--folds", help="Reward-model cross-fitting folds.")] = 3,
    tau: Annotated[float, typer.Option("--tau", help="Switch-DR weight threshold.")] = 10.0,
    n_bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap replicates.")] = 1000,
    interval: Annotated[
        str, typer.Option("--interval", help="Bootstrap interval: bca (default) or percentile.")
    ] = "bca",
    confidence_level: Annotated[
        float, typer.Option("--confidence-level", help="Interval level, in (0, 1).")
    ] = 0.95,
    arm: ArmFlag = None,
    positions: PositionsFlag = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of folds, models, bootstrap.")] = 0,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for ope.json and ope.png.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace ope.json / ope.png in --out.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Estimate a policy's value from logged feedback (IPS, SNIPS, DM, DR, switch-DR)."""
    if (policy_logs is None) == (policy is None):
        raise _flag_error("--policy-logs", "give exactly one of --policy-logs or --policy")
    _check_numbers(members, positions, folds, n_bootstrap, confidence_level)
    if interval not in ("bca", "percentile"):
        raise _flag_error("--interval", f"--interval {interval!r}: use bca or percentile")
    check_out_folder(out, ("ope.json", "ope.png"), overwrite)
    import json

    import torch

    from wager.evaluation.ope import default_estimators, estimate_all, plot_estimates
    from wager.pipeline import fit_reward_draws, reward_model_config

    torch.manual_seed(seed)
    data = _load_logs(logs, fmt, campaign, "--logs", (arm, positions))
    other = (
        _load_logs(policy_logs, fmt, campaign, "--policy-logs", (None, positions))
        if policy_logs
        else None
    )
    dist = _evaluation_distribution(data, other, policy, beta, run, seed)
    cfg = reward_model_config(data, members=members, seed=seed)
    draws = fit_reward_draws(data, folds=folds, config=cfg, seed=seed)
    truth = float(other.reward.mean()) if other is not None else None
    result = estimate_all(
        data,
        dist,
        draws,
        estimators=default_estimators(data, True, switch_tau=tau),
        truth=truth,
        confidence_level=confidence_level,
        n_bootstrap=n_bootstrap,
        seed=seed,
        interval=interval,
    )
    result.setdefault("on_policy", None)
    name = f"policy of {policy_logs}" if policy_logs else f"{policy} on {run}"
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        result["plot"] = str(plot_estimates(result, out / "ope.png", title=f"OPE: {name}"))
        (out / "ope.json").write_text(
            json.dumps(_strict(result), indent=2) + "\n", encoding="utf-8"
        )
    if as_json:
        print_json(result)
    else:
        _render(result, f"Off-policy estimates of the {name}, from {logs}")
