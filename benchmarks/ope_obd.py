"""Off-policy evaluation on the Open Bandit Dataset sample (issue 15, benchmark item 5).

    python benchmarks/ope_obd.py ../shared/data/obd-men [--seeds 0,1,2] [--out results.json]

Two tasks, each checked against a logged policy's own on-policy CTR:

- ``random_from_bts``: the uniformly random policy's CTR estimated from the Bernoulli-TS logs;
- ``bts_from_random``: the Bernoulli-TS policy's CTR estimated from the random logs, its action
  distribution per (item, position) the empirical frequency in the TS logs (the TS policy is
  context-free; its propensities drift during the log, see
  ``wager.evaluation.ope.context_free_distribution``).

wager: IPS, SNIPS, DM, DR, switch-DR (tau = 10) with 95% bootstrap intervals; the reward model
is wager's Bernoulli-click DCN ensemble (5 bootstrap members, 3-fold cross-fitting), its
members the draws that DM / DR intervals sample: each bootstrap replicate draws a Gaussian
with the members' mean and covariance (``gaussian_draws``, the default); "wager_member_draws"
picks one member per replicate instead, and "wager_reward_model_fixed" holds the model fixed
at the members' mean. Open Bandit Pipeline 0.5.7 (when ``import obp`` works):
IPW, SNIPW, DM, DR on the same arrays and the same action distribution, its reward model a
LogisticRegression (C = 100) per position with 3-fold cross-fitting on one-hot user features
(as its OpenBanditDataset builds them) and one-hot item features; its bootstrap intervals at
95%. JSON on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from wager.data.loaders.obd import load_obd_feedback
from wager.data.logged import LoggedFeedback
from wager.evaluation.ope import context_free_distribution, default_estimators, estimate_all
from wager.pipeline import fit_reward_draws, reward_model_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, log, version_of

CONFIDENCE_LEVEL = 0.95
N_BOOTSTRAP = 1000


def _obp_arrays(data: LoggedFeedback) -> tuple[np.ndarray, np.ndarray]:
    """(context, action_context) as Open Bandit Pipeline's OpenBanditDataset builds them."""
    assert data.context is not None and data.item_features is not None
    users = data.context[[c for c in data.context.columns if c.startswith("user_feature_")]]
    context = pd.get_dummies(users, drop_first=True).to_numpy(dtype=float)
    items = data.item_features.drop(columns=["item_id"])
    numeric = [c for c in items.columns if pd.api.types.is_numeric_dtype(items[c])]
    action_context = pd.concat(
        [items[numeric], pd.get_dummies(items.drop(columns=numeric), drop_first=True)], axis=1
    ).to_numpy(dtype=float)
    return context, action_context


def run_obp(
    data: LoggedFeedback, dist: np.ndarray, truth: float, seed: int
) -> dict[str, Any] | str:
    """Open Bandit Pipeline's IPW / SNIPW / DM / DR on the same arrays, or why not."""
    try:
        from obp.ope import (
            DirectMethod,
            DoublyRobust,
            InverseProbabilityWeighting,
            RegressionModel,
            SelfNormalizedInverseProbabilityWeighting,
        )
        from sklearn.linear_model import LogisticRegression
    except ImportError as exc:
        return f"skipped: import obp failed ({exc})"
    context, action_context = _obp_arrays(data)
    reg = RegressionModel(
        n_actions=data.n_actions,
        len_list=data.n_positions,
        action_context=action_context,
        base_model=LogisticRegression(C=100, max_iter=10000, random_state=seed),
    )
    q = reg.fit_predict(
        context=context,
        action=data.action,
        reward=data.reward,
        position=data.position,
        n_folds=3,
        random_state=seed,
    )
    args = {
        "reward": data.reward,
        "action": data.action,
        "position": data.position,
        "pscore": data.propensity,
        "action_dist": dist,
        "estimated_rewards_by_reg_model": q,
    }
    out: dict[str, Any] = {}
    for key, est in (
        ("ipw", InverseProbabilityWeighting()),
        ("snipw", SelfNormalizedInverseProbabilityWeighting()),
        ("dm", DirectMethod()),
        ("dr", DoublyRobust()),
    ):
        value = float(est.estimate_policy_value(**args))
        ci = est.estimate_interval(
            **args, alpha=1 - CONFIDENCE_LEVEL, n_bootstrap_samples=N_BOOTSTRAP, random_state=seed
        )
        low = next(float(v) for k, v in ci.items() if k.endswith("CI (lower)"))
        high = next(float(v) for k, v in ci.items() if k.endswith("CI (upper)"))
        out[key] = {
            "value": value,
            "low": low,
            "high": high,
            "relative_error": abs(value - truth) / truth,
            "covers": bool(low <= truth <= high),
        }
    return out


def run_task(name: str, data: LoggedFeedback, other: LoggedFeedback, seed: int) -> dict[str, Any]:
    """Estimate the value of the policy that wrote ``other`` from ``data``."""
    truth = float(np.mean(other.reward))
    dist = context_free_distribution(other, data.n_rounds)
    torch.manual_seed(seed)
    start = time.perf_counter()
    draws = fit_reward_draws(data, folds=3, config=reward_model_config(data, seed=seed), seed=seed)
    fit_seconds = time.perf_counter() - start
    log(f"{name} seed {seed}: reward model fitted in {fit_seconds:.0f}s")
    wager = estimate_all(
        data,
        dist,
        draws,
        estimators=default_estimators(data, True, switch_tau=10.0),
        truth=truth,
        confidence_level=CONFIDENCE_LEVEL,
        n_bootstrap=N_BOOTSTRAP,
        seed=seed,
    )
    members = estimate_all(  # the same, each replicate picking one member (no Gaussian draw)
        data,
        dist,
        draws,
        estimators=[e for e in default_estimators(data, True) if e.key in ("dm", "dr")],
        truth=truth,
        confidence_level=CONFIDENCE_LEVEL,
        n_bootstrap=N_BOOTSTRAP,
        seed=seed,
        gaussian_draws=False,
    )
    fixed = estimate_all(  # the same, with the reward model held fixed (its mean, S = 1)
        data,
        dist,
        draws.mean(axis=0, keepdims=True),
        estimators=[e for e in default_estimators(data, True) if e.key in ("dm", "dr")],
        truth=truth,
        confidence_level=CONFIDENCE_LEVEL,
        n_bootstrap=N_BOOTSTRAP,
        seed=seed,
    )
    start = time.perf_counter()
    obp = run_obp(data, dist, truth, seed)
    log(f"{name} seed {seed}: obp done in {time.perf_counter() - start:.0f}s")
    return {
        "on_policy": truth,
        "logged_rows": data.n_rounds,
        "logged_ctr": float(np.mean(data.reward)),
        "reward_model_mean": float(draws.mean()),
        "reward_model_fit_seconds": fit_seconds,
        "wager": wager["estimates"],
        "wager_member_draws": members["estimates"],
        "wager_reward_model_fixed": fixed["estimates"],
        "obp": obp,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path, help="folder holding random/ and bts/")
    parser.add_argument("--campaign", default="men")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    random = load_obd_feedback(args.data_dir / "random", args.campaign)
    bts = load_obd_feedback(args.data_dir / "bts", args.campaign)
    seeds = [int(s) for s in args.seeds.split(",")]
    tasks: dict[str, Any] = {}
    for name, data, other in (
        ("random_from_bts", bts, random),
        ("bts_from_random", random, bts),
    ):
        tasks[name] = {str(seed): run_task(name, data, other, seed) for seed in seeds}
    result = {
        "benchmark": "ope_obd",
        "data_dir": str(args.data_dir),
        "campaign": args.campaign,
        "confidence_level": CONFIDENCE_LEVEL,
        "n_bootstrap": N_BOOTSTRAP,
        "seeds": seeds,
        "obp_version": version_of("obp"),
        "tasks": tasks,
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
