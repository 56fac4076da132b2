"""The closed loop of issue 16 on a simulated day: serve -> feedback -> export -> OPE, and
online calibration (acceptance criteria "the loop closes on real logs" and "online
calibration").

    python benchmarks/closed_loop.py [--seeds 20] [--first-seed 0] [--requests 3000]
        [--model examples/serve-clicks.toml] [--epsilon 0.2] [--beta 1.0] [--out FILE]

Per seed:

1. a synthetic world (``--users`` users, ``--items`` items, one day, no new items, 3
   positions: ``wager.data.synthetic.SyntheticWorld``);
2. an initial logged day: ``--warmup`` impressions of the world's popularity logging policy
   (what ``wager simulate`` warms up on; ranks uniform over 1..3), then a model trained on
   its rank-1 impressions (``--train-positions 1``; the model predicts the rank-1 CTR.
   Trained on every rank with position as a context feature, the position effect came out
   under-fitted: on the tuning seeds the position-1 CTR of every pair was under-predicted by
   5-15% on average, which a calibrator fitted on rows of all ranks does not see). The
   model is ``--model``, default ``examples/serve-clicks.toml``: the simulator's 3-member
   factorization click ensemble, early-stopped and temperature-calibrated on the latest 20%
   of the rows; it is saved as version "v1" of a registry;
3. ``wager serve REGISTRY --experiment loop.toml`` (a real uvicorn subprocess; SQLite
   events) with two arms of equal shares: "ucb" = UCB(beta, epsilon) (the logging policy),
   "greedy" = Greedy;
4. a simulated day of ``--requests`` requests: a user drawn uniformly from the world,
   ``POST /v1/recommend`` with ``k`` = 3, ``context = {"position": 1}`` (the model scores
   each candidate's position-1 CTR, the simulator's convention) and ``exclude_seen =
   false`` (every request's candidates are the whole catalogue, as in the simulator); the
   click of the item at rank p is drawn from the world's truth ``true_ctr(user, item) *
   position_bias[p]`` and every item's outcome (click 0 or 1) is sent to
   ``POST /v1/feedback``;
5. ``wager export-logs`` then ``wager ope --format wager --arm ucb --positions 1 --policy
   greedy --run REGISTRY/v1`` (the CLIs, as a user runs them) estimate greedy's CTR at
   rank 1 from the UCB arm's logs. Rank 1 only: the service logs each position's
   propensity given the earlier positions, the estimators divide by the marginal at the
   position, and the two coincide at rank 1;
6. greedy's true CTR on the same requests: ``wager_policy_distribution`` of Greedy on the
   run over the same log (the very slates ``wager ope`` evaluates) times the world's true
   CTR at position 1 (``true_ctr * position_bias[0]``), per impression at rank 1 (= per
   request, one rank-1 impression each), the estimator's definition;
7. online calibration: per arm, ``/metrics``' ``wager_calibration_*`` gauges and ``wager
   abtest report --json``'s calibration (rank 1 and all positions), the served predicted CTR
   and the model's own (``model_predicted_ctr``) beside the observed one.

``--recalibrate`` serves with ``wager serve --recalibrate --recalibrate-delay 0`` (online
recalibration per arm, refitted every ``--recalibrate-every`` seconds with a prior of
``--recalibrate-prior`` impressions; no delay, as this simulation posts every click before
the next request).

Reported over the seeds: per estimator the coverage of greedy's true CTR by the 95%
interval, mean error, interval width; calibration: how often the predicted CTR at rank 1
lies in the observed CTR's 95% interval per arm (and over all positions, where the position
effect is expected to break it). Settings (10 items, epsilon 0.3, beta 1, 60,000 logged
impressions, rank-1 training rows, ``examples/serve-clicks.toml``) were chosen on seeds
100-104 (not reported): with 30 items an epsilon floor of 0.2 left so few exploratory
rank-1 matches of greedy's pick (an importance weight of 150 each) that the IPS intervals
missed the truth on 3 of 3 tuning seeds.
JSON on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, log, stop_on_sigterm

K = 3
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "examples" / "serve-clicks.toml"
ARMS = ("ucb", "greedy")


def experiment_toml(beta: float, epsilon: float) -> str:
    """Two arms of equal shares: UCB with an epsilon floor (the logging policy) and greedy."""
    return (
        '[experiment]\nname = "loop"\nsalt = "day1"\n'
        f'[[experiment.arms]]\nname = "ucb"\nshare = 0.5\npolicy = "ucb"\nbeta = {beta}\n'
        f"epsilon = {epsilon}\n"
        '[[experiment.arms]]\nname = "greedy"\nshare = 0.5\npolicy = "greedy"\n'
    )


def train_initial(
    world: Any, warmup: int, seed: int, registry: Path, config: Path, positions: int
) -> None:
    """Fit the model of ``config`` (``--model``) on the popularity policy's logged day, its
    impressions at ranks 1..``positions`` (``--train-positions``); save it as
    ``registry/v1``."""
    from dataclasses import replace

    from wager.config import RunConfig
    from wager.data.synthetic import PopularityPolicy
    from wager.pipeline import RecommenderSimulationModel

    logged = world.sample_log(warmup, PopularityPolicy(), day=0, seed=seed)
    logged = logged[logged["position"] <= positions].reset_index(drop=True)
    model = RecommenderSimulationModel(replace(RunConfig.load(config), seed=seed), world)
    items = world.items.iloc[world.available_items(0)].reset_index(drop=True)
    model.fit(logged, items)
    assert model.recommender_ is not None
    model.recommender_.save(registry / "v1")


def simulate_day(post: Any, world: Any, requests: int, seed: int) -> None:
    """``requests`` requests of uniformly drawn users through ``post(path, body) -> dict``;
    clicks from the world's truth at the served rank, every outcome sent as feedback."""
    rng = np.random.default_rng([seed, 7])
    bias = world.position_bias
    for n, user in enumerate(rng.integers(0, world.config.n_users, requests)):
        body = {"user_id": str(user), "k": K, "context": {"position": 1}, "exclude_seen": False}
        out = post("/v1/recommend", body)
        items = np.array([int(i["item_id"]) for i in out["items"]])
        ranks = np.array([int(i["rank"]) for i in out["items"]])
        p = world.true_ctr_matrix(np.array([user]), items)[0] * bias[ranks - 1]
        clicks = (rng.random(len(items)) < p).astype(int)
        events = [
            {"event_id": f"{out['request_id']}-{i}", "request_id": out["request_id"],
             "item_id": str(item), "click": int(c)}
            for i, (item, c) in enumerate(zip(items, clicks, strict=True))
        ]  # fmt: skip
        post("/v1/feedback", {"events": events})
        if (n + 1) % 1000 == 0:
            log(f"  {n + 1}/{requests} requests")


def greedy_truth(logs: Path, run: Path, world: Any) -> float:
    """Greedy's expected CTR at rank 1 on the UCB arm's logged requests (the estimand of
    ``wager ope --arm ucb --positions 1 --policy greedy``), from the world's truth."""
    from wager.data.loaders.event_log import load_event_log
    from wager.pipeline import wager_policy_distribution
    from wager.policies import Greedy
    from wager.recommender import Recommender

    data = load_event_log(logs, arm="ucb", positions=1)
    pi = wager_policy_distribution(Recommender.load(run), data, Greedy())[:, :, 0]  # (n, A)
    users = np.asarray(data.user_ids).astype(np.int64)
    items = np.asarray(data.item_ids).astype(np.int64)
    true = world.true_ctr_matrix(None, items)[users] * world.position_bias[0]  # (n, A)
    return float(np.mean(np.sum(pi * true, axis=1)))


def calibration_from_metrics(text: str) -> dict[str, dict[str, dict[str, float]]]:
    """arm -> slot -> gauge -> value of the ``wager_calibration_*`` lines of /metrics."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    pattern = re.compile(r'^wager_calibration_(\w+)\{arm="([^"]*)",slot="(\w+)"\} (\S+)$')
    for line in text.splitlines():
        m = pattern.match(line)
        if m:
            name, arm, slot, value = m.groups()
            out.setdefault(arm, {}).setdefault(slot, {})[name] = float(value)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "wager.cli", *args, "--json"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"wager {' '.join(args)} failed:\n{done.stderr}\n{done.stdout}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def run_seed(seed: int, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """One world, initial day, served day, export, OPE and calibration check."""
    import torch

    from wager.data.synthetic import SyntheticWorld, WorldConfig

    torch.manual_seed(seed)
    world = SyntheticWorld(
        WorldConfig(n_users=args.users, n_items=args.items, n_days=1, new_items_per_day=0,
                    seed=seed)
    )  # fmt: skip
    registry = folder / "registry"
    train_initial(world, args.warmup, seed, registry, args.model, args.train_positions)
    exp = folder / "loop.toml"
    exp.write_text(experiment_toml(args.beta, args.epsilon))
    db = f"sqlite:///{folder / 'events.db'}"
    port = _free_port()
    recalibrate = []
    if args.recalibrate:  # clicks are posted before the next request: no delay to wait
        recalibrate = ["--recalibrate", "--recalibrate-delay", "0", "--recalibrate-prior",
                       str(args.recalibrate_prior), "--recalibrate-every",
                       str(args.recalibrate_every)]  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-m", "wager.cli", "serve", str(registry), "--port", str(port),
         "--db", db, "--experiment", str(exp), *recalibrate],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{base}/readyz", timeout=1).read()
                break
            except OSError:
                time.sleep(0.2)

        def post(path: str, body: dict[str, Any]) -> Any:
            req = urllib.request.Request(
                base + path, json.dumps(body).encode(), {"content-type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read())

        simulate_day(post, world, args.requests, seed)
        metrics = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    finally:
        server.terminate()
        server.wait(timeout=30)
    logs = folder / "logs.parquet"
    _cli("export-logs", "--db", db, "--out", str(logs))
    ope = _cli(
        "ope", "--logs", str(logs), "--format", "wager", "--arm", "ucb", "--positions", "1",
        "--policy", "greedy", "--run", str(registry / "v1"), "--members", str(args.members),
        "--folds", "2", "--seed", str(seed),
    )  # fmt: skip
    report = _cli("abtest", "report", "--db", db, "--experiment", "loop")
    truth = greedy_truth(logs, registry / "v1", world)
    estimates = {
        name: {**e, "covers": bool(e["low"] <= truth <= e["high"]), "error": e["value"] - truth}
        for name, e in ope["estimates"].items()
    }
    return {
        "seed": seed,
        "greedy_true_ctr_rank1": truth,
        "estimates": estimates,
        "calibration_metrics": calibration_from_metrics(metrics),
        "calibration_report": {a: r["calibration"] for a, r in report["arms"].items()},
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Coverage, mean error and width per estimator; calibration agreement per arm/slot."""
    out: dict[str, Any] = {"estimators": {}, "calibration": {}}
    for name in rows[0]["estimates"]:
        e = [r["estimates"][name] for r in rows]
        out["estimators"][name] = {
            "coverage": float(np.mean([x["covers"] for x in e])),
            "mean_error": float(np.mean([x["error"] for x in e])),
            "se_of_mean_error": float(np.std([x["error"] for x in e], ddof=1) / np.sqrt(len(e))),
            "mean_width": float(np.mean([x["high"] - x["low"] for x in e])),
        }
    for arm in ARMS:
        for slot in ("top", "all"):
            cal = [r["calibration_report"][arm][slot] for r in rows]
            met = [r["calibration_metrics"][f"loop/{arm}"][slot] for r in rows]
            out["calibration"][f"{arm}/{slot}"] = {
                "within_rate_report": float(np.mean([c["within"] for c in cal])),
                "within_rate_metrics": float(np.mean([m["within_interval"] for m in met])),
                "mean_predicted": float(np.mean([c["predicted_ctr"] for c in cal])),
                "mean_model_predicted": float(np.mean([c["model_predicted_ctr"] for c in cal])),
                "mean_observed": float(np.mean([c["observed_ctr"] for c in cal])),
                "mean_z": float(np.mean([
                    (c["predicted_ctr"] - c["observed_ctr"])
                    / max(np.sqrt(c["observed_ctr"] * (1 - c["observed_ctr"]) / c["impressions"]),
                          1e-12) for c in cal
                ])),
            }  # fmt: skip
    return out


def main() -> None:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--items", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=60_000)
    parser.add_argument(
        "--train-positions",
        type=int,
        default=1,
        help="train on the logged day's impressions at ranks 1..N (default 1: the rank-1 CTR)",
    )
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--epsilon", type=float, default=0.3)
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_MODEL,
        help="run config of the served model (default examples/serve-clicks.toml)",
    )
    parser.add_argument(
        "--recalibrate",
        action="store_true",
        help="serve with online recalibration (wager serve --recalibrate --recalibrate-delay 0)",
    )
    parser.add_argument("--recalibrate-prior", type=float, default=200.0)
    parser.add_argument("--recalibrate-every", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not args.model.is_file():
        parser.error(f"--model {args.model}: no such config file")
    rows = []
    start = time.perf_counter()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        log(f"seed {seed}")
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(run_seed(seed, args, Path(tmp)))
        log(f"  {json.dumps(rows[-1], default=str)}")
    emit(
        {
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "summary": summarise(rows),
            "seconds": time.perf_counter() - start,
            "seeds": rows,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
