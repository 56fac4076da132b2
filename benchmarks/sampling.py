"""Negative-sampling speed: wager's samplers vs a naive per-row Python loop, in one run.

Prints JSON. Usage: python benchmarks/sampling.py [--positives 100000] [--per-positive 4]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd

from wager.data.sampling import PopularityNegatives, UniformNegatives
from wager.data.schema import Schema


def naive_uniform(pos: pd.DataFrame, n_per: int, items: np.ndarray, rng: np.random.Generator):
    """Reference: one rejection loop per positive row, in Python."""
    seen = pos.groupby("user_id")["item_id"].agg(set).to_dict()
    out = []
    for u in pos["user_id"].to_numpy():
        for _ in range(n_per):
            while True:
                i = items[rng.integers(items.size)]
                if i not in seen[u]:
                    out.append((u, i))
                    break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--positives", type=int, default=100_000)
    ap.add_argument("--per-positive", type=int, default=4)
    ap.add_argument(
        "--naive-rows",
        type=int,
        default=10_000,
        help="rows for the Python-loop baseline (its time is scaled up)",
    )
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    pos = pd.DataFrame(
        {
            "user_id": rng.integers(0, 5_000, args.positives),
            "item_id": rng.zipf(1.3, args.positives) % 3_000,
        }
    )
    schema = Schema(label=None)
    result: dict[str, object] = {"positives": args.positives, "per_positive": args.per_positive}
    for name, sampler in (("uniform", UniformNegatives()), ("popularity", PopularityNegatives())):
        best = np.inf
        for _ in range(3):
            t = time.perf_counter()
            sampler.sample(pos, schema, args.per_positive, np.random.default_rng(1))
            best = min(best, time.perf_counter() - t)
        result[f"{name}_seconds"] = best
    sub = pos.iloc[: args.naive_rows]
    t = time.perf_counter()
    naive_uniform(sub, args.per_positive, np.unique(pos["item_id"]), np.random.default_rng(1))
    naive = (time.perf_counter() - t) * len(pos) / len(sub)
    result["naive_loop_seconds_scaled"] = naive
    result["speedup_uniform_vs_naive"] = naive / float(result["uniform_seconds"])
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
