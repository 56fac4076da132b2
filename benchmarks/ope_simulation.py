"""Off-policy evaluation in the simulator, against the true policy value (issue 15, benchmark 3).

    python benchmarks/ope_simulation.py [--seeds 50] [--out results.json]

Design, per seed (``wager.evaluation.ope.simulated_ope``):

- a small world (``--users`` users, ``--items`` items, one day, no turnover, 3 positions);
- one model, fitted **once** on the simulator's warm-up log (``--warmup`` impressions of the
  popularity policy): ``examples/simulate.toml``'s factorization click model with a
  ``--members``-member bootstrap ensemble;
- the **logging policy**, epsilon-greedy (``--epsilon``) over that model's means, serves one
  day of ``--requests`` requests; the simulator logs its exact marginal distribution per
  request and position, and each impression's propensity is that marginal;
- the **evaluation policy**, UCB (``--beta``) over the same model, gives its (deterministic)
  marginal on every logged request; its **true value** is its exact expected clicks per
  impression on those requests and positions (the world's true CTR times the position bias);
- IPS, SNIPS, DM, DR and switch-DR (tau 10) with 95% bootstrap intervals (1000 replicates
  over requests); the reward model of DM / DR is the same fitted model (it never saw the
  evaluated log, so no cross-fitting), its ensemble members the draws the intervals sample.

Over the seeds, per estimator: bias (mean error), its standard error, RMSE, the coverage of
the 95% interval, and the mean interval width. The criteria of the issue: DR's coverage
>= 0.9; IPS unbiased within its standard error (|mean error| <= 2 SE). JSON on stdout
(progress on stderr).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wager.config import EnsembleConfig
from wager.data.synthetic import SyntheticWorld, WorldConfig
from wager.evaluation.ope import INTERVALS
from wager.evaluation.ope.simulated import simulated_ope
from wager.evaluation.simulation import SimulationConfig
from wager.pipeline import (
    RecommenderSimulationModel,
    simulation_reward_draws,
    simulation_run_config,
)
from wager.policies import UCB, EpsilonGreedy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, log

CONFIDENCE_LEVEL = 0.95


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One seeded world, log, model and set of estimates (see the module docstring)."""
    world = SyntheticWorld(
        WorldConfig(
            n_users=args.users, n_items=args.items, n_days=1, new_items_per_day=0, seed=seed
        )
    )
    cfg = replace(
        simulation_run_config(),
        ensemble=EnsembleConfig(members=args.members, bootstrap=True),
        seed=seed,
    )
    model = RecommenderSimulationModel(cfg, world)
    sim = SimulationConfig(
        days=1,
        requests_per_day=args.requests,
        k=3,
        warmup_rows=args.warmup,
        log_action_distribution=True,
        seed=seed,
    )
    return simulated_ope(
        world,
        model,
        EpsilonGreedy(epsilon=args.epsilon),
        UCB(beta=args.beta),
        sim,
        reward_draws=lambda feedback: simulation_reward_draws(model, feedback),
        confidence_level=CONFIDENCE_LEVEL,
        n_bootstrap=args.bootstrap,
        interval=args.interval,
    )


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per estimator over the seeds: bias, its SE, RMSE, coverage, mean width, mean |rel. err|."""
    out: dict[str, dict[str, float]] = {}
    for key in runs[0]["estimates"]:
        rows = [r["estimates"][key] for r in runs]
        err = np.array([e["error"] for e in rows])
        truth = np.array([r["on_policy"] for r in runs])
        se = float(err.std(ddof=1) / np.sqrt(len(err))) if len(err) > 1 else float("nan")
        out[key] = {
            "bias": float(err.mean()),
            "bias_se": se,
            "bias_within_2se": bool(abs(err.mean()) <= 2 * se),
            "relative_bias": float(err.mean() / truth.mean()),
            "rmse": float(np.sqrt(np.mean(err**2))),
            "coverage": float(np.mean([e["covers"] for e in rows])),
            "mean_width": float(np.mean([e["high"] - e["low"] for e in rows])),
            "mean_relative_error": float(np.mean([e["relative_error"] for e in rows])),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=50, help="seeds FIRST..FIRST+N-1")
    parser.add_argument("--first-seed", type=int, default=0, help="FIRST")
    parser.add_argument(
        "--interval", choices=INTERVALS, default="bca", help="bootstrap interval method"
    )
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3000, help="warm-up log impressions")
    parser.add_argument("--requests", type=int, default=1500, help="logged requests (x3)")
    parser.add_argument("--members", type=int, default=5, help="reward-model ensemble")
    parser.add_argument("--epsilon", type=float, default=0.5, help="logging epsilon-greedy")
    parser.add_argument("--beta", type=float, default=1.0, help="evaluated UCB's beta")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    runs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        r = run_seed(seed, args)
        runs.append({"seed": seed, **r})
        dr = r["estimates"]["dr"]
        log(
            f"seed {seed}: truth {r['on_policy']:.4f}, DR {dr['value']:.4f} "
            f"[{dr['low']:.4f}, {dr['high']:.4f}] ({time.perf_counter() - start:.0f}s)"
        )
    summary = summarise(runs)
    result = {
        "benchmark": "ope_simulation",
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"out": None},
        "logging_policy": f"EpsilonGreedy(epsilon={args.epsilon})",
        "evaluation_policy": f"UCB(beta={args.beta})",
        "confidence_level": CONFIDENCE_LEVEL,
        "seconds": time.perf_counter() - start,
        "criteria": {
            "dr_coverage_at_least_0.9": summary["dr"]["coverage"] >= 0.9,
            "ips_unbiased_within_2se": summary["ips"]["bias_within_2se"],
        },
        "summary": summary,
        "runs": [
            {
                "seed": r["seed"],
                "truth": r["on_policy"],
                "logging_value": r["logging_value"],
                "logged_ctr": r["logged_ctr"],
                "estimates": {
                    k: {f: e[f] for f in ("value", "low", "high", "ess", "covers")}
                    for k, e in r["estimates"].items()
                },
            }
            for r in runs
        ],
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
