"""``wager simulate``: run a policy (or a sweep of policies) in the synthetic world.

One policy: a per-day table and the totals (``--json``: ``{"days": [...], "total": {"ctr",
"rpm", "regret", "throughput", "coverage", ...}}``), and with ``--out DIR`` the same JSON as
``DIR/simulation.json`` and the cumulative regret per day as ``DIR/regret.png``.

A sweep (``--sweep "ucb:beta=0,0.5,1;greedy;epsilon_greedy:epsilon=0.05"``, over ``--seeds
N`` seeds): a table of each variant's totals (mean and std over seeds), and with ``--out``
``DIR/sweep.json``, ``DIR/tradeoff.png`` (RPM against targets throughput) and
``DIR/regret.png`` (mean cumulative regret per day). Seed s builds the world, the
simulation's draws and the model's training from s, the same for every variant (common
random numbers: every variant serves the same users and draws its clicks from the same
uniforms).

Policies are built by :func:`wager.policies.policy_from_name` (imported when the command
runs); the model is a :class:`~wager.pipeline.RecommenderSimulationModel` of ``--config``
(default: ``examples/simulate.toml`` shipped in the package). ``--item-effects`` completes
the model with empirical-Bayes item effects (:mod:`wager.uncertainty.item_effects`; default
config then ``examples/simulate-item-effects.toml``, a model without item ids).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from wager.cli.common import (
    JsonFlag,
    _flag_error,
    _load_config,
    app,
    check_out_folder,
    console,
    print_json,
)
from wager.cli.render import _table, _text

if TYPE_CHECKING:
    from wager.config import RunConfig
    from wager.evaluation.simulation import SimulationConfig, SimulationResult
    from wager.policies import Policy

_TOTALS = ("ctr", "rpm", "regret", "throughput", "coverage")
_POLICY_PARAMS = ("beta", "epsilon", "temperature", "draws", "batch_aware")
_CONFIG_FLAGS = {
    "days": "--days",
    "requests_per_day": "--requests",
    "k": "-k",
    "warmup_rows": "--warmup",
    "target_impressions": "--target-impressions",
    "target_clicks": "--target-clicks",
    "batch_requests": "--batch-requests",
    "seed": "--seed",
}

_OnlineFlag = Annotated[
    bool,
    typer.Option(
        "--online",
        help="Update predictions before each batch with the clicks since the last fit "
        "(Beta posterior), the same for every policy.",
    ),
]
_BatchRequestsFlag = Annotated[
    int, typer.Option("--batch-requests", help="Requests served per prediction (and update).")
]
_ConfigFlag = Annotated[
    Path | None,
    typer.Option("--config", help="Run config TOML of the model (default simulate.toml)."),
]
_ItemEffectsFlag = Annotated[
    bool,
    typer.Option(
        "--item-effects",
        help="Empirical-Bayes item effects on the model's logits; the default model is then "
        "the feature-only simulate-item-effects.toml (a --config must not learn item ids).",
    ),
]


def parse_sweep(spec: str) -> list[tuple[str, dict[str, float]]]:
    """Variants of ``--sweep``: ``NAME[:PARAM=V1,V2,...[:PARAM=...]]`` joined by ``;``; each
    parameter's values multiply out (``ucb:beta=0,1`` is two variants).

    Returns:
        (policy name, {param: value}) per variant, in the order written.
    """
    variants: list[tuple[str, dict[str, float]]] = []
    for entry in (e.strip() for e in spec.split(";")):
        if not entry:
            continue
        name, *params = (p.strip() for p in entry.split(":"))
        grid: list[list[tuple[str, float]]] = []
        for p in params:
            key, eq, values = p.partition("=")
            key = key.strip()
            if not eq or key not in _POLICY_PARAMS or not values.strip():
                raise _flag_error(
                    "--sweep",
                    f"--sweep: {p!r} in {entry!r} is not PARAM=V1,V2,... with PARAM one of "
                    f"{', '.join(_POLICY_PARAMS)}",
                )
            try:
                grid.append([(key, float(v)) for v in values.split(",")])
            except ValueError:
                raise _flag_error(
                    "--sweep", f"--sweep: {key}={values!r} in {entry!r} holds a non-number"
                ) from None
        if not name:
            raise _flag_error("--sweep", f"--sweep: {entry!r} has no policy name before ':'")
        variants += [(name, dict(combo)) for combo in itertools.product(*grid)]
    if not variants:
        raise _flag_error("--sweep", "--sweep is empty: give e.g. 'ucb:beta=0,1;greedy'")
    return variants


def _label(name: str, params: dict[str, float]) -> str:
    return name + "".join(f" {k}={v:g}" for k, v in params.items())


def _policy(name: str, params: dict[str, float], flag: str) -> Policy:
    """The policy ``name`` with ``params`` (:func:`wager.policies.policy_from_name`); a bad
    name or parameter is reported against ``flag``."""
    from wager.policies import policy_from_name

    kwargs: dict[str, Any] = {k: (int(v) if k == "draws" else v) for k, v in params.items()}
    if "batch_aware" in kwargs:
        if kwargs["batch_aware"] not in (0, 1):
            raise _flag_error(
                flag, f"{flag}: batch_aware must be 0 or 1, got {params['batch_aware']:g}"
            )
        kwargs["batch_aware"] = bool(kwargs["batch_aware"])
    try:
        return policy_from_name(name, **kwargs)
    except (ValueError, TypeError) as exc:
        raise _flag_error(flag, f"{flag}: {exc}") from None


def _simulate_one(
    policy: Policy,
    seed: int,
    world_args: dict[str, Any],
    sim: SimulationConfig,
    model_config: RunConfig,
    item_effects: bool = False,
) -> SimulationResult:
    from dataclasses import replace

    from wager.data.synthetic import SyntheticWorld, WorldConfig
    from wager.evaluation.simulation import simulate
    from wager.pipeline import RecommenderSimulationModel

    world = SyntheticWorld(WorldConfig(n_days=sim.days, seed=seed, **world_args))
    model = RecommenderSimulationModel(
        replace(model_config, seed=seed), world, item_effects=item_effects
    )
    return simulate(world, policy, model, replace(sim, seed=seed))


def _sim_config(**fields: int) -> SimulationConfig:
    """The SimulationConfig of the flags; a bad value is reported against its flag."""
    from wager.evaluation.simulation import SimulationConfig

    try:
        return SimulationConfig(**fields)  # type: ignore[arg-type]
    except ValueError as exc:
        flag = next((f for name, f in _CONFIG_FLAGS.items() if f"Config.{name} " in str(exc)), "")
        raise _flag_error(flag, f"{flag}: {exc}") from None


def _world_args(
    users: int, items: int, new_items: int, hidden_strength: float, taste_strength: float
) -> dict[str, Any]:
    """The world's WorldConfig fields, checked before any simulation (errors name the flag)."""
    from wager.data.synthetic import WorldConfig

    args: dict[str, Any] = {
        "n_users": users,
        "n_items": items,
        "new_items_per_day": new_items,
        "hidden_strength": hidden_strength,
        "taste_strength": taste_strength,
    }
    flags = {
        "n_users": "--users",
        "n_items": "--items",
        "new_items_per_day": "--new-items",
        "hidden_strength": "--hidden-strength",
        "taste_strength": "--taste-strength",
    }
    try:
        WorldConfig(**args)
    except ValueError as exc:
        flag = next((f for name, f in flags.items() if f"WorldConfig.{name} " in str(exc)), "")
        raise _flag_error(flag, f"{flag}: {exc}") from None
    return args


def _check_flags(days: int, seeds: int, out: Path | None, threads: int) -> None:
    if days < 1:
        raise _flag_error("--days", f"--days must be >= 1, got {days}")
    if seeds < 1:
        raise _flag_error("--seeds", f"--seeds must be >= 1, got {seeds}")
    if threads < 1:
        raise _flag_error("--threads", f"--threads must be >= 1, got {threads}")


def _model_config(config: Path | None, item_effects: bool) -> RunConfig:
    """The simulated model's run config: ``--config`` or the shipped default (the item-effects
    one with ``--item-effects``), checked for ``--item-effects`` before any data is made."""
    from wager.pipeline import check_item_effects, simulation_run_config

    model_config = (
        _load_config(config) if config is not None else simulation_run_config(item_effects)
    )
    try:
        check_item_effects(model_config, item_effects)
    except ValueError as exc:
        raise _flag_error("--item-effects", f"--item-effects: {exc}") from None
    return model_config


@app.command("simulate")
def simulate_command(
    policy: Annotated[
        str, typer.Option("--policy", help="greedy | epsilon_greedy | ucb | thompson | softmax")
    ] = "greedy",
    beta: Annotated[float | None, typer.Option("--beta", help="UCB's beta.")] = None,
    epsilon: Annotated[float | None, typer.Option("--epsilon", help="ε-greedy's ε.")] = None,
    temperature: Annotated[
        float | None, typer.Option("--temperature", help="Softmax temperature.")
    ] = None,
    draws: Annotated[
        int | None, typer.Option("--draws", help="Thompson sampling's propensity draws.")
    ] = None,
    batch_aware: Annotated[
        bool,
        typer.Option(
            "--batch-aware",
            help="UCB: shrink each std by the impressions served since the last fit (GP-BUCB).",
        ),
    ] = False,
    days: Annotated[int, typer.Option("--days", help="Days simulated.")] = 30,
    seed: Annotated[int, typer.Option("--seed", help="Seed of world, draws and model.")] = 0,
    requests: Annotated[int, typer.Option("--requests", help="Requests per day.")] = 1000,
    k: Annotated[int, typer.Option("-k", "--k", help="Slate length (positions 1..k).")] = 3,
    users: Annotated[int, typer.Option("--users", help="Users in the world.")] = 500,
    items: Annotated[int, typer.Option("--items", help="Items on day 0 (catalogue size).")] = 100,
    new_items: Annotated[int, typer.Option("--new-items", help="Items arriving per day.")] = 10,
    hidden_strength: Annotated[
        float,
        typer.Option("--hidden-strength", help="World: weight of the hidden factors, [0, 10]."),
    ] = 1.0,
    taste_strength: Annotated[
        float,
        typer.Option(
            "--taste-strength",
            help="World: weight of user-specific hidden taste, [0, 10] (0: context-level CTR).",
        ),
    ] = 1.0,
    warmup: Annotated[int, typer.Option("--warmup", help="Warm-up log impressions.")] = 5000,
    online: _OnlineFlag = False,
    batch_requests: _BatchRequestsFlag = 1024,
    target_impressions: Annotated[
        int, typer.Option("--target-impressions", help="Throughput: impressions a new item needs.")
    ] = 100,
    target_clicks: Annotated[
        int, typer.Option("--target-clicks", help="Throughput: clicks a new item needs.")
    ] = 0,
    config: _ConfigFlag = None,
    item_effects: _ItemEffectsFlag = False,
    sweep: Annotated[
        str | None,
        typer.Option(
            "--sweep",
            help="Policies to compare, e.g. 'ucb:beta=0,0.5,1;greedy;epsilon_greedy:epsilon=0.05'"
            " (replaces --policy and its parameters).",
        ),
    ] = None,
    seeds: Annotated[int, typer.Option("--seeds", help="Seeds per sweep variant.")] = 1,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for the JSON and PNG files.")
    ] = None,
    threads: Annotated[int, typer.Option("--threads", help="Torch intra-op threads.")] = 1,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace earlier output files in --out.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Run a policy (or a sweep of them) in the synthetic world: CTR, RPM, regret, throughput."""
    import torch

    _check_flags(days, seeds, out, threads)
    torch.set_num_threads(threads)
    model_config = _model_config(config, item_effects)
    sim = _sim_config(
        days=days,
        requests_per_day=requests,
        k=k,
        warmup_rows=warmup,
        target_impressions=target_impressions,
        target_clicks=target_clicks,
        batch_requests=batch_requests,
        online_updates=online,
        seed=seed,
    )
    world_args = _world_args(users, items, new_items, hidden_strength, taste_strength)
    if sweep is None:
        given = (beta, epsilon, temperature, draws, 1.0 if batch_aware else None)
        params = {p: float(v) for p, v in zip(_POLICY_PARAMS, given, strict=True) if v is not None}
        chosen = _policy(policy, params, "--policy")
        check_out_folder(out, ("simulation.json", "regret.png"), overwrite)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        result = _simulate_one(chosen, seed, world_args, sim, model_config, item_effects)
        _report_one(result, out, as_json)
    else:
        _run_sweep(
            sweep, seeds, world_args, sim, (model_config, item_effects), (out, overwrite, as_json)
        )


def _run_sweep(
    sweep: str,
    seeds: int,
    world_args: dict[str, Any],
    sim: SimulationConfig,
    model: tuple[RunConfig, bool],
    output: tuple[Path | None, bool, bool],
) -> None:
    """Every ``--sweep`` variant over seeds sim.seed .. sim.seed + seeds - 1 (all variants
    and the output folder checked before the first simulation); ``model`` = (the model's
    config, --item-effects), ``output`` = (--out, --overwrite, --json)."""
    out, overwrite, as_json = output
    variants = parse_sweep(sweep)
    chosen_all = [_policy(n, p, "--sweep") for n, p in variants]  # all checked first
    check_out_folder(out, ("sweep.json", "tradeoff.png", "regret.png"), overwrite)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    seed = sim.seed
    runs = [
        [_simulate_one(c, seed + s, world_args, sim, *model) for s in range(seeds)]
        for c in chosen_all
    ]
    _report_sweep(variants, runs, seed, out, as_json)


def _report_one(result: SimulationResult, out: Path | None, as_json: bool) -> None:
    import json

    import numpy as np

    from wager.evaluation.plots import plot_regret

    payload = result.to_dict()
    if out is not None:
        curve = result.days["cumulative_regret"].to_numpy()
        payload["plot"] = str(
            plot_regret({result.policy: (curve, np.zeros_like(curve))}, out / "regret.png")
        )
        (out / "simulation.json").write_text(json.dumps(payload, indent=2) + "\n")
    if as_json:
        print_json(payload)
        return
    table = _table(
        f"simulation of {result.policy}",
        ["day", "ctr", "rpm", "regret", "cum. regret", "throughput", "coverage", "catalogue"],
    )
    for row in result.days.to_dict("records"):
        table.add_row(
            *(
                _text(v)
                for v in (
                    row["day"],
                    f"{row['ctr']:.4f}",
                    f"{row['rpm']:.2f}",
                    f"{row['regret']:.1f}",
                    f"{row['cumulative_regret']:.1f}",
                    row["throughput"],
                    f"{row['coverage']:.3f}",
                    row["catalogue"],
                )
            )
        )
    console.print(table)
    t = result.total
    console.print(
        _text(
            f"total: ctr {t['ctr']:.4f} (expected {t['expected_ctr']:.4f}, oracle "
            f"{t['oracle_ctr']:.4f}), rpm {t['rpm']:.2f}, regret {t['regret']:.1f}, "
            f"throughput {t['throughput']}, coverage {t['coverage']:.3f}"
        )
    )
    if out is not None:
        console.print(_text(f"wrote {out / 'simulation.json'} and {payload['plot']}"))


def _report_sweep(
    variants: list[tuple[str, dict[str, float]]],
    runs: list[list[SimulationResult]],
    seed: int,
    out: Path | None,
    as_json: bool,
) -> None:
    import json

    import numpy as np

    from wager.evaluation.plots import plot_regret, plot_tradeoff

    rows = []
    for (name, params), results in zip(variants, runs, strict=True):
        totals = {key: np.array([r.total[key] for r in results], dtype=float) for key in _TOTALS}
        curves = np.stack([r.days["cumulative_regret"].to_numpy() for r in results])
        rows.append(
            {
                "policy": _label(name, params),
                "name": name,
                "params": params,
                "seeds": [seed + s for s in range(len(results))],
                "mean": {key: float(v.mean()) for key, v in totals.items()},
                "std": {
                    key: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for key, v in totals.items()
                },
                "per_seed": [r.total for r in results],
                "cumulative_regret_mean": curves.mean(axis=0).tolist(),
            }
        )
    payload: dict[str, Any] = {"runs": rows}
    if out is not None:
        payload["plots"] = [
            str(
                plot_tradeoff(
                    {
                        r["policy"]: (
                            r["mean"]["throughput"],
                            r["std"]["throughput"],
                            r["mean"]["rpm"],
                            r["std"]["rpm"],
                        )
                        for r in rows
                    },
                    out / "tradeoff.png",
                )
            ),
            str(
                plot_regret(
                    {
                        r["policy"]: (
                            np.asarray(r["cumulative_regret_mean"]),
                            np.zeros(len(r["cumulative_regret_mean"])),
                        )
                        for r in rows
                    },
                    out / "regret.png",
                )
            ),
        ]
        (out / "sweep.json").write_text(json.dumps(payload, indent=2) + "\n")
    if as_json:
        print_json(payload)
        return
    n = len(runs[0])
    table = _table(f"sweep over {n} seed{'s' if n > 1 else ''} (mean ± std)", ["policy", *_TOTALS])
    for r in rows:
        table.add_row(
            _text(r["policy"]),
            *(_text(f"{r['mean'][key]:.4g} ± {r['std'][key]:.2g}") for key in _TOTALS),
        )
    console.print(table)
    if out is not None:
        console.print(_text(f"wrote {out / 'sweep.json'}, {', '.join(payload['plots'])}"))
