"""Exploration in simulation (issue 15, benchmarks 1, 2 and 4): JSON on stdout, progress on
stderr.

    python benchmarks/exploration.py [--world content|tastes] [--seeds 5] [--days N]
        [--ucb-batch-aware 1] [--online 0|1] [--batch-requests N] [--workers 2] [--threads 1]
        [--parts tradeoff,regret,peers] [--out results.json]

Every run is :func:`wager.evaluation.simulation.simulate` in one world per seed. Worlds
(``WORLDS``):

- ``content`` (default; the density-network paper's setting): 200 users, 100 items live, 20
  new a day (an item lives 5 days), hidden strength 3 with no user-specific taste
  (``taste_strength`` 0: the CTR of an item depends on the user's features and on the item's
  hidden quality), 2,000 requests a day, 10 days.
- ``tastes`` (session 1's world): 500 users, 100 items, 10 new a day, the default hidden
  taste, 500 requests a day, 15 days: most regret is each user's hidden taste, which about 3
  impressions per user per day teach no policy.

Both: slates of 3, a 3,000-impression popularity warm-up log, the model refitted each evening
on every log so far, targets throughput counting new items that reach 50 impressions. UCB is
batch-aware by default (``--ucb-batch-aware 1``: within a day the impressions already served
shrink each item's std, GP-BUCB; without it every similar request of the day gets the same
optimistic slate). ``--online 1`` turns on the simulator's within-day online updates
(``SimulationConfig.online_updates``: before each batch of ``--batch-requests`` requests the
model's prediction is updated, as a Beta posterior, with the clicks seen since the evening
fit; the same for every policy); ``--batch-requests`` (default 1024, the simulator's) sets
how often that feedback arrives. Seed s builds the world, the simulation's draws and the
model's training, the same for every policy (common random numbers). The reported seeds are
0..seeds-1; every choice of a parameter (UCB's best beta, MABWiser's alpha) is made on the
separate tuning seed ``TUNING_SEED`` and reported with its figures.

- ``tradeoff`` (benchmark 1): UCB with beta in {0, 0.5, 1, 1.5}, total RPM and targets
  throughput relative to beta = 0 (ratio of the means over seeds, and paired per seed), for
  the deep density network on aggregated (context group, item, position) CTR rows
  (``examples/simulate-ddn.toml``) and the Bernoulli-head ensemble on click rows
  (``examples/simulate.toml``).
- ``regret`` (benchmark 2): cumulative regret per day for greedy, epsilon-greedy (0.01, 0.05,
  0.1), UCB (the beta of {0.5, 1, 1.5} with the lowest regret on the tuning seed) and
  Thompson sampling with the click ensemble; mean and std over seeds.
- ``peers`` (benchmark 4): MABWiser's LinUCB and LinTS (when ``import mabwiser`` works) in
  the same simulator: one linear arm per item on the user and request features (segment and
  country one-hot, standardised age, position one-hot), refitted each evening on the day's
  impressions (``partial_fit``), new items added as arms, retired ones removed; a slate is
  the k best arms by the learner's own score (LinUCB's upper bound, LinTS's draw) at
  position 1. alpha in {0.01, 0.03, 0.1, 0.3, 1} chosen on the tuning seed by regret.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.special import expit

from wager.config import RunConfig
from wager.data.synthetic import SyntheticWorld, WorldConfig
from wager.evaluation.simulation import SimulationConfig, simulate
from wager.pipeline import RecommenderSimulationModel
from wager.policies import Greedy, policy_from_name
from wager.prediction import Prediction
from wager.uncertainty.calibration import clipped_logit
from wager.uncertainty.item_effects import ItemEffects, fit_item_effects

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, log, version_of

#: world presets: (WorldConfig overrides, SimulationConfig overrides, default days)
WORLDS: dict[str, tuple[dict[str, Any], dict[str, Any], int]] = {
    # the density-network paper's setting: content recommendation with a context-level CTR
    # (no user-specific hidden taste: what an item earns depends on the user's features and
    # on the item's hidden quality), high turnover (20 of 100 items new each day, so an item
    # lives 5 days) and many impressions per item (6,000 a day over 100 items)
    "content": (
        {
            "n_users": 200,
            "n_items": 100,
            "new_items_per_day": 20,
            "hidden_strength": 3.0,
            "taste_strength": 0.0,
        },
        {"requests_per_day": 2000},
        10,
    ),
    # session 1's world: most regret is each user's hidden taste, which about 3 impressions
    # per user per day teach no policy
    "tastes": (
        {"n_users": 500, "n_items": 100, "new_items_per_day": 10},
        {"requests_per_day": 500},
        15,
    ),
}
WORLD: dict[str, Any] = dict(WORLDS["content"][0])
SIM: dict[str, Any] = {
    "requests_per_day": 2000,
    "k": 3,
    "warmup_rows": 3000,
    "target_impressions": 50,
    "cpc_sigma": 0.0,
}
#: extra UCB parameters (``--ucb-batch-aware``: the GP-BUCB pending-impression update)
UCB_EXTRA: dict[str, float] = {"batch_aware": 1.0}
TUNING_SEED = 100
BETAS = (0.0, 0.5, 1.0, 1.5)
EPSILONS = (0.01, 0.05, 0.1)
PEER_ALPHAS = (0.01, 0.03, 0.1, 0.3, 1.0)
TS_DRAWS = 100  # Monte Carlo draws behind Thompson sampling's logged propensities
MODELS = {
    "ddn": "examples/simulate-ddn.toml",
    "click": "examples/simulate.toml",
    # the feature-only click model with empirical-Bayes item effects (--click-model)
    "click_effects": "examples/simulate-item-effects.toml",
}
#: the click model of the tradeoff and regret parts (``--click-model``)
CLICK = ["click"]

Job = tuple[str, str, dict[str, float], int, int, int]  # model, policy, params, seed, days, thr


# --------------------------------------------------------------------------- the MABWiser peer


class MabwiserModel:
    """MABWiser's LinUCB / LinTS as a :class:`~wager.evaluation.simulation.SimulationModel`:
    its ``predict`` returns the learner's own score (LinUCB's upper bound, LinTS's posterior
    draw) as a deterministic prediction, so :class:`~wager.policies.Greedy` serves the k
    best arms. ``fit`` trains on the impressions it has not seen yet (``partial_fit``)."""

    def __init__(self, world: SyntheticWorld, learner: str, alpha: float, seed: int) -> None:
        from mabwiser.mab import MAB, LearningPolicy

        self.world = world
        users = world.users
        segment = pd.get_dummies(users["segment"].astype(str)).to_numpy(dtype=float)
        country = pd.get_dummies(users["country"].astype(str)).to_numpy(dtype=float)
        age = users["age"].to_numpy(dtype=float)
        age = np.where(np.isnan(age), np.nanmean(age), age)
        age = ((age - age.mean()) / (age.std() or 1.0))[:, None]
        self.user_x = np.hstack([segment, country, age])
        self.n_positions = world.config.n_positions
        self.policy = (LearningPolicy.LinUCB if learner == "linucb" else LearningPolicy.LinTS)(
            alpha=alpha
        )
        self.make = MAB
        self.seed = seed
        self.mab: Any = None
        self.seen = 0
        self.arms: set[int] = set()

    def _context(self, users: np.ndarray, positions: np.ndarray) -> np.ndarray:
        onehot = np.eye(self.n_positions)[positions - 1]
        return np.hstack([self.user_x[users], onehot])

    def fit(self, logs: pd.DataFrame, items: pd.DataFrame) -> None:
        new = logs.iloc[self.seen :]
        self.seen = len(logs)
        x = self._context(new["user_id"].to_numpy(), new["position"].to_numpy())
        decisions = new["item_id"].to_numpy().tolist()
        arms = set(decisions) | {int(i) for i in items["item_id"]}
        if self.mab is None:
            self.arms = {int(a) for a in arms}
            self.mab = self.make(sorted(self.arms), self.policy, seed=self.seed)
            self.mab.fit(decisions, new["click"].to_numpy(), x)
            return
        self.add_items(pd.DataFrame({"item_id": sorted(arms)}))
        self.mab.partial_fit(decisions, new["click"].to_numpy(), x)

    def predict(self, user_ids: np.ndarray, item_ids: np.ndarray) -> Prediction:
        x = self._context(np.asarray(user_ids), np.ones(len(user_ids), dtype=np.int64))
        scores = self.mab.predict_expectations(x)
        scores = [scores] if isinstance(scores, dict) else scores
        mean = np.array([[row[int(i)] for i in item_ids] for row in scores], dtype=np.float64)
        return Prediction(mean=torch.from_numpy(mean), method="mabwiser")

    def add_items(self, items: pd.DataFrame) -> None:
        for arm in (int(a) for a in items["item_id"]):
            if arm not in self.arms:
                self.arms.add(arm)
                self.mab.add_arm(arm)

    def retire_items(self, item_ids: np.ndarray) -> None:
        """Retired arms stay in the learner (never asked for again)."""


# ------------------------------------------------------------------ the feature-oracle model


class WorldFeaturesModel:
    """A diagnostic :class:`~wager.evaluation.simulation.SimulationModel`: the world's own
    observable logit (every feature effect known exactly; reads the world's internals, as
    the oracle does) completed by the same empirical-Bayes item effects as ``click_effects``
    (:func:`~wager.uncertainty.item_effects.fit_item_effects` on every log each evening).
    Only the hidden item effects are learnt, so its regret shows what the policies could
    reach with a perfect feature model. Needs ``taste_strength`` 0 (the content world)."""

    def __init__(self, world: SyntheticWorld) -> None:
        if world.config.taste_strength != 0:
            raise ValueError("WorldFeaturesModel needs a world with taste_strength 0")
        self.world = world
        self.effects: ItemEffects | None = None

    def _observable(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        w = self.world
        hidden = w.config.hidden_strength * w._item_bias[items]
        return w._logit_matrix(users, items) - hidden[None, :]

    def fit(self, logs: pd.DataFrame, items: pd.DataFrame) -> None:
        users, shown = logs["user_id"].to_numpy(), logs["item_id"].to_numpy()
        w = self.world
        observable = w._logit(users, shown) - w.config.hidden_strength * w._item_bias[shown]
        # P(click) = bias * sigmoid(x): its logit, so the effects' offset model holds
        p = w.position_bias[logs["position"].to_numpy() - 1] * expit(observable)
        self.effects = fit_item_effects(clipped_logit(p, 0.0), shown, logs["click"])

    def predict(self, user_ids: np.ndarray, item_ids: np.ndarray) -> Prediction:
        assert self.effects is not None
        obs = self._observable(np.asarray(user_ids), np.asarray(item_ids))
        return self.effects.predict(obs, item_ids, method="world_features")

    def add_items(self, items: pd.DataFrame) -> None:
        """Nothing to do: a new item takes the effects' prior."""

    def retire_items(self, item_ids: np.ndarray) -> None:
        """Nothing to do."""


# --------------------------------------------------------------------------- one run


def _model_config(name: str) -> RunConfig:
    with resources.as_file(resources.files("wager").joinpath(MODELS[name])) as p:
        return RunConfig.load(p)


def _policy_kwargs(params: dict[str, float]) -> dict[str, Any]:
    return {
        k: (int(v) if k == "draws" else bool(v) if k == "batch_aware" else v)
        for k, v in params.items()
    }


def run_one(job: Job) -> dict[str, Any]:
    """One simulation: totals, cumulative regret per day, seconds."""
    model_name, policy_name, params, seed, days, threads = job
    torch.set_num_threads(threads)
    world = SyntheticWorld(WorldConfig(n_days=days, seed=seed, **WORLD))  # type: ignore[arg-type]
    start = time.perf_counter()
    model: Any
    if model_name in ("linucb", "lints"):
        model = MabwiserModel(world, model_name, params["alpha"], seed)
        policy: Any = Greedy()
    elif model_name == "world_effects":
        model = WorldFeaturesModel(world)
        policy = policy_from_name(policy_name, **_policy_kwargs(params))
    else:
        model = RecommenderSimulationModel(
            replace(_model_config(model_name), seed=seed),
            world,
            item_effects=model_name == "click_effects",
        )
        policy = policy_from_name(policy_name, **_policy_kwargs(params))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = simulate(world, policy, model, SimulationConfig(days=days, seed=seed, **SIM))
    seconds = time.perf_counter() - start
    total = {k: float(v) for k, v in result.total.items()}
    return {
        "model": model_name,
        "policy": policy_name,
        "params": params,
        "seed": seed,
        "total": total,
        "cumulative_regret": result.days["cumulative_regret"].round(3).tolist(),
        "seconds": round(seconds, 1),
    }


def run_all(jobs: list[Job], workers: int) -> list[dict[str, Any]]:
    """Run ``jobs`` on ``workers`` processes (in order of submission), logging each."""
    out: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for r in pool.map(run_one, jobs):
            t = r["total"]
            log(
                f"{r['model']:6s} {r['policy']:15s} {r['params']} seed {r['seed']}: rpm "
                f"{t['rpm']:.2f} throughput {t['throughput']:.0f} regret {t['regret']:.1f} "
                f"({r['seconds']} s)"
            )
            out.append(r)
    return out


# --------------------------------------------------------------------------- summaries


def _key(r: dict[str, Any]) -> str:
    return _key_of(r["model"], r["policy"], r["params"])


def _key_of(model: str, policy: str, params: dict[str, float]) -> str:
    return model + ":" + policy + "".join(f" {k}={v:g}" for k, v in params.items())


def _ucb(beta: float) -> dict[str, float]:
    return {"beta": beta, **UCB_EXTRA}


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per variant: mean and std over seeds of each total, mean / std regret curve."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(_key(r), []).append(r)
    out: dict[str, dict[str, Any]] = {}
    for key, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        totals = {k: np.array([r["total"][k] for r in rs]) for k in rs[0]["total"]}
        curves = np.array([r["cumulative_regret"] for r in rs])
        out[key] = {
            "seeds": [r["seed"] for r in rs],
            "mean": {k: float(v.mean()) for k, v in totals.items()},
            "std": {k: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for k, v in totals.items()},
            "per_seed": {k: totals[k].tolist() for k in ("rpm", "throughput", "regret")},
            "regret_curve_mean": curves.mean(axis=0).round(2).tolist(),
            "regret_curve_std": (curves.std(axis=0, ddof=1) if len(rs) > 1 else 0 * curves[0])
            .round(2)
            .tolist(),
            "seconds_mean": float(np.mean([r["seconds"] for r in rs])),
        }
    return out


def tradeoff_section(summary: dict[str, dict[str, Any]], model: str) -> dict[str, Any]:
    """RPM and throughput of UCB(beta) relative to beta = 0 and the criteria's checks."""
    base = summary[_key_of(model, "ucb", _ucb(0.0))]
    rows: dict[str, Any] = {}
    for beta in BETAS:
        s = summary[_key_of(model, "ucb", _ucb(beta))]
        paired_t = np.array(s["per_seed"]["throughput"]) / np.array(base["per_seed"]["throughput"])
        paired_r = np.array(s["per_seed"]["rpm"]) / np.array(base["per_seed"]["rpm"])
        rows[f"{beta:g}"] = {
            "rpm": s["mean"]["rpm"],
            "rpm_std": s["std"]["rpm"],
            "throughput": s["mean"]["throughput"],
            "throughput_std": s["std"]["throughput"],
            "regret": s["mean"]["regret"],
            "rpm_relative": s["mean"]["rpm"] / base["mean"]["rpm"] - 1,
            "throughput_relative": s["mean"]["throughput"] / base["mean"]["throughput"] - 1,
            "rpm_relative_per_seed": (paired_r - 1).round(4).tolist(),
            "throughput_relative_per_seed": (paired_t - 1).round(4).tolist(),
        }
    through = [rows[f"{b:g}"]["throughput"] for b in BETAS]
    half = rows["0.5"]
    return {
        "by_beta": rows,
        "throughput_increases_with_beta": bool(np.all(np.diff(through) > 0)),
        "beta_0.5_throughput_at_least_+5%": bool(half["throughput_relative"] >= 0.05),
        "beta_0.5_rpm_within_-1%": bool(half["rpm_relative"] >= -0.01),
    }


def _tune(
    model: str, policy: str, param: str, grid: tuple[float, ...], args: argparse.Namespace
) -> tuple[float, dict[str, float]]:
    """The value of ``param`` in ``grid`` with the lowest regret on the tuning seed."""
    extra = UCB_EXTRA if policy == "ucb" else {}
    jobs: list[Job] = [
        (model, policy, {param: v, **extra}, TUNING_SEED, args.days, args.threads) for v in grid
    ]
    runs = run_all(jobs, args.workers)
    regrets = {f"{r['params'][param]:g}": r["total"]["regret"] for r in runs}
    best = min(runs, key=lambda r: r["total"]["regret"])["params"][param]
    return float(best), regrets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--world", choices=sorted(WORLDS), default="content")
    ap.add_argument("--days", type=int, default=None, help="default: the world's")
    ap.add_argument(
        "--ucb-batch-aware",
        type=int,
        choices=(0, 1),
        default=1,
        help="1: UCB shrinks stds by the impressions pending since the last fit (GP-BUCB)",
    )
    ap.add_argument(
        "--online",
        type=int,
        choices=(0, 1),
        default=0,
        help="1: update predictions within the day with the clicks seen since the fit",
    )
    ap.add_argument(
        "--batch-requests", type=int, default=1024, help="requests served per prediction"
    )
    ap.add_argument(
        "--click-model",
        choices=("click", "click_effects", "world_effects"),
        default="click",
        help="the click model of tradeoff and regret: 'click' (examples/simulate.toml, the "
        "members' spread), 'click_effects' (examples/simulate-item-effects.toml with "
        "empirical-Bayes item effects) or 'world_effects' (diagnostic: the world's own "
        "feature logit with the same item effects)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--workers", type=int, default=2, help="simulations run at once")
    ap.add_argument("--parts", default="tradeoff,regret,peers")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - {"tradeoff", "regret", "peers"}
    if unknown:
        ap.error(f"--parts: unknown {sorted(unknown)}; use tradeoff, regret, peers")
    world, sim, days = WORLDS[args.world]
    WORLD.clear()
    WORLD.update(world)  # the worker processes fork after this and see it
    SIM.update(sim)
    SIM.update({"online_updates": bool(args.online), "batch_requests": args.batch_requests})
    UCB_EXTRA.clear()
    UCB_EXTRA.update({"batch_aware": 1.0} if args.ucb_batch_aware else {})
    args.days = days if args.days is None else args.days
    CLICK[0] = click = args.click_model
    start = time.perf_counter()
    seeds = range(args.seeds)
    result: dict[str, Any] = {
        "world_preset": args.world,
        "ucb": {"batch_aware": bool(args.ucb_batch_aware)},
        "click_model": {"name": click, "config": MODELS.get(click, "WorldFeaturesModel")},
        "world": WORLD,
        "simulation": {**SIM, "days": args.days},
        "seeds": list(seeds),
        "tuning_seed": TUNING_SEED,
        "threads": args.threads,
        "workers": args.workers,
        "versions": {p: version_of(p) for p in ("torch", "mabwiser")},
    }
    jobs: list[Job] = []
    if "tradeoff" in parts:
        models = ("ddn", click)
        jobs += [
            (m, "ucb", _ucb(b), s, args.days, args.threads)
            for m in models
            for b in BETAS
            for s in seeds
        ]
    if "regret" in parts:
        beta, tuned = _tune(click, "ucb", "beta", BETAS[1:], args)
        result["ucb_beta_tuning"] = {"chosen": beta, "regret_by_beta": tuned}
        policies: list[tuple[str, dict[str, float]]] = [("greedy", {})]
        policies += [("epsilon_greedy", {"epsilon": e}) for e in EPSILONS]
        policies += [("thompson", {"draws": TS_DRAWS})]
        if "tradeoff" not in parts or beta not in BETAS:
            policies.append(("ucb", _ucb(beta)))
        jobs += [(click, p, kw, s, args.days, args.threads) for p, kw in policies for s in seeds]
    peers_ok = True
    if "peers" in parts:
        try:
            import mabwiser  # noqa: F401
        except ImportError:
            peers_ok = False
            result["peers"] = {"skipped": "import mabwiser failed: pip install mabwiser"}
        if peers_ok:
            chosen = {}
            for learner in ("linucb", "lints"):
                alpha, tuned = _tune(learner, "greedy", "alpha", PEER_ALPHAS, args)
                chosen[learner] = {"chosen": alpha, "regret_by_alpha": tuned}
                jobs += [
                    (learner, "greedy", {"alpha": alpha}, s, args.days, args.threads) for s in seeds
                ]
            result["peer_alpha_tuning"] = chosen
    runs = run_all(jobs, args.workers)
    summary = summarise(runs)
    result["variants"] = summary
    if "tradeoff" in parts:
        result["tradeoff"] = {m: tradeoff_section(summary, m) for m in ("ddn", click)}
    if "regret" in parts:
        result["regret"] = regret_section(summary, result["ucb_beta_tuning"]["chosen"])
    if "peers" in parts and peers_ok:
        result["peers"] = peers_section(summary, result.get("regret"))
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    emit(result, args.out)


def regret_section(summary: dict[str, dict[str, Any]], beta: float) -> dict[str, Any]:
    """Final cumulative regret per policy (mean, std over seeds) and the 0.7 x check."""
    click = CLICK[0]
    names = {
        "greedy": f"{click}:greedy",
        **{f"epsilon_greedy {e:g}": f"{click}:epsilon_greedy epsilon={e:g}" for e in EPSILONS},
        f"ucb {beta:g}": _key_of(click, "ucb", _ucb(beta)),
        "thompson": f"{click}:thompson draws={TS_DRAWS}",
    }
    table = {
        n: {"regret": summary[k]["mean"]["regret"], "std": summary[k]["std"]["regret"]}
        for n, k in names.items()
    }
    best_eps = min(table[f"epsilon_greedy {e:g}"]["regret"] for e in EPSILONS)
    ucb, ts = table[f"ucb {beta:g}"]["regret"], table["thompson"]["regret"]
    return {
        "final_regret": table,
        "best_epsilon_greedy": best_eps,
        "ucb_over_best_epsilon": ucb / best_eps,
        "thompson_over_best_epsilon": ts / best_eps,
        "ucb_at_most_0.7x": bool(ucb <= 0.7 * best_eps),
        "thompson_at_most_0.7x": bool(ts <= 0.7 * best_eps),
    }


def peers_section(
    summary: dict[str, dict[str, Any]], regret: dict[str, Any] | None
) -> dict[str, Any]:
    """MABWiser's final regret beside wager's UCB / Thompson sampling."""
    peer = {
        k.split(":")[0]: {"regret": v["mean"]["regret"], "std": v["std"]["regret"]}
        for k, v in summary.items()
        if k.startswith(("linucb:", "lints:"))
    }
    out: dict[str, Any] = {"final_regret": peer}
    if regret is not None and peer:
        best_peer = min(v["regret"] for v in peer.values())
        ours = min(
            v["regret"] for n, v in regret["final_regret"].items() if n.startswith(("ucb", "th"))
        )
        out["best_peer"] = best_peer
        out["best_wager_ucb_or_thompson"] = ours
        out["wager_no_higher_than_peer"] = bool(ours <= best_peer)
    return out


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
