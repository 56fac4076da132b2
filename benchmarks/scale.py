"""Issue 17's scale benchmarks (JSON on stdout, progress on stderr).

``--part ddp``: data-parallel training throughput. A synthetic rating table (``--users`` x
``--items``, ``--rows`` ratings: round(3 + user bias + item bias + u . v + noise), 1..5;
``numpy.random.default_rng(--seed)``) is written to a temporary folder and the same config
(biased MF, ``--dim``, ``--members`` members, ``--epochs`` epochs, global batch
``--batch-size``, no early stopping effect on the timing) is trained by ``wager train``:

- ``nproc1_threads1``: one process, one torch thread;
- ``nproc1_threads2``: one process, two torch threads (this machine's cores);
- ``nproc2``: ``--nproc 2`` (torchrun, gloo, one thread per process: torchrun's default).

Reported per run: training examples/s (training rows / mean seconds per epoch), seconds
per step, the time spent summing gradients per step (``reduce_seconds`` / steps: the
measured communication, over loopback here), the gradient bytes per step (parameters x 4),
and RMSE on the test rows (the runs must agree). The projection to N machines of one process
each assumes compute splits evenly (step time of one process / N) and a ring all-reduce of
the gradient over a network of ``--network-gbps`` and ``--network-latency-us``:
2 (N - 1) / N x bytes / bandwidth + 2 (N - 1) x latency per step; it is a model, stated as
such, not a measurement.

``--part ann``: retrieval latency and recall against brute force for catalogues of
``--ann-sizes`` items (default 10^4, 10^5, 10^6; dimension ``--ann-dim`` 64). Items are
clustered like learnt embeddings: ``--ann-clusters`` centres ~ N(0, I), each item a centre
plus N(0, s^2 I) noise (s = ``--ann-spread``, 0.5; at 1 the clusters overlap as much as the
centres spread); queries are drawn the same way from the same centres (a "user"
near a taste cluster). Per size: wager's ``BruteForceIndex`` (exact top-10 by inner
product, torch), ``FaissIndex("ivf")`` (nlist = 4 sqrt(n)) and ``FaissIndex("hnsw")``
(32 links per node). Their accuracy knob (IVF's nprobe, HNSW's ef_search) is the smallest
of a grid whose recall@10 on 200 validation queries reaches ``--ann-target`` (0.95); the
figures are then measured on 200 other test queries: build seconds, recall@10 against brute
force, and seconds per query asked one at a time (the median of the test queries, as a
service asks) and per query in one batch of 200.

``--part ray``: an ensemble of ``--members`` members (the ``ddp`` table and model, 5
members unless given) trained by ``wager train`` three ways: ``stacked`` (the default
``[ensemble] fit``: one vmapped loop, two torch threads), ``separate`` (each member its own
loop, one thread, one after another) and ``separate_ray`` (the same members as Ray tasks on
a local cluster of this machine's CPUs, ``--ray auto``, which starts it). Reported per run:
training seconds (the fit's loop, ``train_seconds``), the command's wall seconds (Ray's
start and stop included), each member's loop seconds, and the test RMSE; the separate runs
must agree exactly. Ratios: sequential separate / Ray, and stacked / Ray.

``--part stream``: peak memory of training from Parquet larger than memory. Rating tables
of ``--stream-rows`` rows (default 2.5M, 5M and 11.5M: about 1, 2 and 5 times
``--stream-budget-mb`` (64) as a pandas DataFrame; ``--users`` x ``--items`` ids as text)
are written in 10 part files of 50,000-row row groups, and each is trained for one epoch
(biased MF, dim 8, 2 members) twice by ``wager train`` in a fresh process: streamed
(``[data] stream = true``, ``memory_budget_mb`` = the budget, 100,000-row shuffle buffer,
0.1% validation and test rows) and loaded in memory (the same folder, the same fractions;
another split). Reported per size and path: peak RSS (the process's VmHWM), its growth over the
same command on the first 20,000 rows (the fixed cost: Python, torch, wager, the model),
the data's size as a DataFrame and on disk, seconds, and test RMSE.

Usage: ``python benchmarks/scale.py --part ddp|ann|ray|stream [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, log, seconds_since_start

ROOT = Path(__file__).resolve().parents[1]


def ratings(users: int, items: int, rows: int, dim: int, seed: int) -> pd.DataFrame:
    """The synthetic rating table (see the module docstring); (user, item) pairs unique."""
    rng = np.random.default_rng(seed)
    pairs = np.unique(rng.integers(0, users * items, size=int(rows * 1.1)))
    pairs = rng.permutation(pairs)[:rows]
    u, i = pairs // items, pairs % items
    bu, bi = rng.normal(0, 0.5, users), rng.normal(0, 0.5, items)
    pu, qi = rng.normal(0, 0.4, (users, dim)), rng.normal(0, 0.4, (items, dim))
    y = 3 + bu[u] + bi[i] + np.einsum("nd,nd->n", pu[u], qi[i]) + rng.normal(0, 0.7, len(u))
    return pd.DataFrame(
        {"user_id": u.astype(str), "item_id": i.astype(str),
         "rating": np.clip(np.rint(y), 1, 5).astype(int)}
    )  # fmt: skip


def config(data: Path, args: argparse.Namespace, extra: str = "") -> str:
    return f"""seed = 0

[schema]
user = "user_id"
item = "item_id"
label = "rating"
label_kind = "rating"
rating_range = [1.0, 5.0]

[data]
path = "{data}"
format = "table"
split = "random"
test_fraction = 0.1
valid_fraction = 0.05

[model]
type = "biased_mf"
dim = {args.dim}

[training]
epochs = {args.epochs}
batch_size = {args.batch_size}
learning_rate = 0.005
patience = {args.epochs}

[ensemble]
members = {args.members}
bootstrap = false
{extra}"""


def train(
    toml: Path, out: Path, nproc: int, threads: int, extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``wager train`` in a subprocess; metrics.json plus the gradient size and the
    command's wall seconds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(threads)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    command = [sys.executable, "-m", "wager.cli", "train", str(toml), "--out", str(out),
               "--json", "--nproc", str(nproc), *extra]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"wager train {' '.join(command[5:])} failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    from wager.recommender import Recommender

    rec = Recommender.load(out)
    n_params = sum(t.numel() for t in rec.scorer_.stack.state_dict().values())
    return {**metrics, "parameters": int(n_params), "wall_seconds": wall}


def summary(m: dict[str, Any], batch_size: int) -> dict[str, Any]:
    steps = m["epochs"] * math.ceil(m["n_train"] / batch_size)
    per_epoch = m["epoch_seconds"]
    return {
        "processes": m["processes"],
        "examples_per_s": m["n_train"] / per_epoch,
        "epoch_seconds": per_epoch,
        "step_seconds": per_epoch / math.ceil(m["n_train"] / batch_size),
        "reduce_seconds_per_step": m["reduce_seconds"] / steps,
        "gradient_bytes_per_step": 4 * m["parameters"],
        "epochs": m["epochs"],
        "rmse": m["rmse"],
        "train_seconds": m.get("train_seconds"),
    }


def projection(one: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Examples/s on N machines of one process each (the model of the module docstring)."""
    compute = one["step_seconds"]
    size = one["gradient_bytes_per_step"]
    bandwidth = args.network_gbps * 1e9 / 8
    latency = args.network_latency_us * 1e-6
    out = []
    for n in (1, 2, 4, 8, 16, 32):
        comm = 0.0 if n == 1 else 2 * (n - 1) / n * size / bandwidth + 2 * (n - 1) * latency
        step = compute / n + comm
        out.append({
            "machines": n, "step_seconds": step, "communication_seconds": comm,
            "examples_per_s": args.batch_size / step, "speedup": compute / step,
        })  # fmt: skip
    return out


def ddp(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="wager-scale-") as tmp:
        work = Path(tmp)
        table = ratings(args.users, args.items, args.rows, args.dim, args.seed)
        table.to_csv(work / "ratings.csv", index=False)
        toml = work / "run.toml"
        toml.write_text(config(work / "ratings.csv", args))
        log(f"{len(table)} ratings; training {args.members} members x {args.epochs} epochs")
        runs = {}
        for name, nproc, threads in (("nproc1_threads1", 1, 1), ("nproc1_threads2", 1, 2),
                                     ("nproc2", 2, 1)):  # fmt: skip
            metrics = train(toml, work / name, nproc, threads)
            runs[name] = summary(metrics, args.batch_size)
            log(f"{name}: {json.dumps(runs[name])}")
    base = runs["nproc1_threads1"]
    return {
        "rows": args.rows,
        "runs": runs,
        "speedup_2_processes_vs_1_thread": runs["nproc2"]["examples_per_s"]
        / base["examples_per_s"],
        "speedup_2_processes_vs_2_threads": runs["nproc2"]["examples_per_s"]
        / runs["nproc1_threads2"]["examples_per_s"],
        "rmse_difference_2_vs_1": runs["nproc2"]["rmse"] - base["rmse"],
        "projection": {
            "assumptions": {
                "network_gbps": args.network_gbps,
                "network_latency_us": args.network_latency_us,
                "model": "step = one process's step / N + ring all-reduce of the gradient",
            },
            "machines": projection(base, args),
        },
    }


def _clustered(n: int, centres: np.ndarray, rng: np.random.Generator, spread: float) -> np.ndarray:
    picks = rng.integers(0, len(centres), size=n)
    noise = rng.normal(0.0, spread, size=(n, centres.shape[1])).astype(np.float32)
    return (centres[picks] + noise).astype(np.float32)


def _recall(got: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |top-k found ∩ true top-k| / k ((Q, k) position arrays)."""
    return float(np.mean([len(set(g) & set(t)) / len(t) for g, t in zip(got, truth, strict=True)]))


def _per_query_seconds(index: Any, queries: Any, k: int) -> float:
    """Median seconds of one query asked alone."""
    import time

    times = []
    for row in range(queries.shape[0]):
        q = queries[row : row + 1]
        start = time.perf_counter()
        index.search(q, k)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) if times else math.nan


def _tuned(kind: str, grid: list[int], build: Any, valid: Any, truth_valid: np.ndarray,
           target: float, k: int) -> tuple[int, Any, float]:  # fmt: skip
    """The smallest knob of ``grid`` whose validation recall reaches ``target`` (else the
    largest), with the index set to it and its validation recall."""
    index = build
    recall = math.nan
    for knob in grid:
        if kind == "ivf":
            index.set_search(nprobe=knob)
        else:
            index.set_search(ef_search=knob)
        recall = _recall(index.search(valid, k).positions.numpy(), truth_valid)
        if recall >= target:
            return knob, index, recall
    return grid[-1], index, recall


def ann(args: argparse.Namespace) -> dict[str, Any]:
    import time

    import torch

    from wager.retrieval import BruteForceIndex
    from wager.retrieval.faiss_index import FaissIndex

    torch.set_num_threads(args.ann_threads)
    rng = np.random.default_rng(args.seed)
    dim, k = args.ann_dim, 10
    centres = rng.normal(0.0, 1.0, size=(args.ann_clusters, dim)).astype(np.float32)
    valid = torch.from_numpy(_clustered(200, centres, rng, args.ann_spread))
    test = torch.from_numpy(_clustered(200, centres, rng, args.ann_spread))
    sizes = []
    for n in args.ann_sizes:
        items = torch.from_numpy(_clustered(n, centres, rng, args.ann_spread))
        out: dict[str, Any] = {"items": n}
        start = time.perf_counter()
        brute = BruteForceIndex().index(items)
        out["brute"] = {"build_seconds": time.perf_counter() - start}
        truth_valid = brute.search(valid, k).positions.numpy()
        start = time.perf_counter()
        truth_test = brute.search(test, k).positions.numpy()
        out["brute"]["batch_seconds_per_query"] = (time.perf_counter() - start) / len(test)
        out["brute"]["seconds_per_query"] = _per_query_seconds(brute, test[:50], k)
        log(f"n={n} brute force: {out['brute']}")
        for kind, grid in (("ivf", [1, 2, 4, 8, 16, 32, 64, 128, 256]),
                           ("hnsw", [16, 32, 64, 128, 256, 512])):  # fmt: skip
            start = time.perf_counter()
            index = FaissIndex(kind, nlist=max(1, int(4 * math.sqrt(n))), hnsw_m=32)
            index.index(items)
            build = time.perf_counter() - start
            knob, index, valid_recall = _tuned(kind, grid, index, valid, truth_valid,
                                               args.ann_target, k)  # fmt: skip
            start = time.perf_counter()
            found = index.search(test, k).positions.numpy()
            batch = (time.perf_counter() - start) / len(test)
            single = _per_query_seconds(index, test, k)
            out[kind] = {
                "build_seconds": build,
                "nlist" if kind == "ivf" else "hnsw_m": index.nlist_ if kind == "ivf" else 32,
                "nprobe" if kind == "ivf" else "ef_search": knob,
                "valid_recall@10": valid_recall,
                "recall@10": _recall(found, truth_test),
                "seconds_per_query": single,
                "batch_seconds_per_query": batch,
                "speedup_per_query": out["brute"]["seconds_per_query"] / single,
                "speedup_batch": out["brute"]["batch_seconds_per_query"] / batch,
            }
            log(f"n={n} {kind}: {out[kind]}")
            del index
        sizes.append(out)
        del items, brute
    return {"dim": dim, "clusters": args.ann_clusters, "spread": args.ann_spread,
            "threads": args.ann_threads,
            "target_recall": args.ann_target, "sizes": sizes}  # fmt: skip


def ray_part(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="wager-scale-") as tmp:
        work = Path(tmp)
        table = ratings(args.users, args.items, args.rows, args.dim, args.seed)
        table.to_csv(work / "ratings.csv", index=False)
        log(f"{len(table)} ratings; an ensemble of {args.members} x {args.epochs} epochs")
        runs = {}
        for name, fit, threads, extra in (
            ("stacked", "stacked", 2, ()),
            ("separate", "separate", 1, ()),
            ("separate_ray", "separate", 1, ("--ray", "auto")),
        ):
            toml = work / f"{name}.toml"
            toml.write_text(config(work / "ratings.csv", args, f'fit = "{fit}"\n'))
            m = train(toml, work / name, 1, threads, extra)
            runs[name] = {
                "train_seconds": m["train_seconds"],
                "wall_seconds": m["wall_seconds"],
                "member_seconds": m.get("member_seconds"),
                "epochs": m["epochs"],
                "rmse": m["rmse"],
                "trained_on": m["trained_on"],
            }
            log(f"{name}: {json.dumps(runs[name])}")
    ray = runs["separate_ray"]
    return {
        "rows": args.rows,
        "members": args.members,
        "cpus": os.cpu_count(),
        "runs": runs,
        "separate_identical_on_ray": runs["separate"]["rmse"] == ray["rmse"],
        "speedup_ray_vs_separate_train": runs["separate"]["train_seconds"] / ray["train_seconds"],
        "speedup_ray_vs_separate_wall": runs["separate"]["wall_seconds"] / ray["wall_seconds"],
        "speedup_ray_vs_stacked_train": runs["stacked"]["train_seconds"] / ray["train_seconds"],
    }


_PEAK = """\
import sys
from wager.cli import app
code = 0
try:
    app(sys.argv[1:])
except SystemExit as e:
    code = e.code
# VmHWM: this process's own peak (ru_maxrss would keep the parent's from before exec)
with open("/proc/self/status") as status, open(sys.argv[-1] + ".rss", "w") as f:
    print(next(line.split()[1] for line in status if line.startswith("VmHWM")), file=f)
sys.exit(code)
"""


def _stream_config(folder: Path, stream: bool, budget: int) -> str:
    return f"""seed = 0
[schema]
user = "user_id"
item = "item_id"
label = "rating"
label_kind = "rating"
rating_range = [1.0, 5.0]
[data]
path = "{folder}"
format = "table"
stream = {str(stream).lower()}
duplicates = "keep"
valid_fraction = 0.001
test_fraction = 0.001
shuffle_buffer = 100000
stream_sample_rows = 10000
memory_budget_mb = {budget}
[model]
type = "biased_mf"
dim = 8
[training]
epochs = 1
batch_size = 4096
[ensemble]
members = 2
"""


def _peak(config: Path, out: Path) -> dict[str, Any]:
    """Peak RSS (MiB), seconds and metrics of ``wager train`` in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "2"}
    command = [sys.executable, "-c", _PEAK, "train", str(config), "--json", "--out", str(out)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"wager train {config} failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "peak_rss_mib": int(Path(str(out) + ".rss").read_text()) / 1024,
        "seconds": time.perf_counter() - start,
        "train_seconds": metrics["train_seconds"],
        "n_train": metrics["n_train"],
        "rmse": metrics["rmse"],
    }


def stream_part(args: argparse.Namespace) -> dict[str, Any]:
    budget = args.stream_budget_mb
    sizes = args.stream_rows or [2_500_000, 5_000_000, 11_500_000]
    with tempfile.TemporaryDirectory(prefix="wager-stream-") as tmp:
        work = Path(tmp)
        rng = np.random.default_rng(args.seed)
        fixed = {}
        small = work / "small"
        small.mkdir()
        sizes_out = []
        for n in sizes:
            folder = work / f"rows{n}"
            folder.mkdir()
            frame_bytes = 0
            for k in range(10):
                m = n // 10
                part = pd.DataFrame({
                    "user_id": pd.array(rng.integers(0, args.users, m)).astype(str),
                    "item_id": pd.array(rng.integers(0, args.items, m)).astype(str),
                    "rating": rng.integers(1, 6, m).astype(np.float64),
                })  # fmt: skip
                part.to_parquet(folder / f"part-{k:02d}.parquet", row_group_size=50_000)
                frame_bytes += int(part.memory_usage(deep=True).sum())
                if not fixed and k == 0:
                    part.head(20_000).to_parquet(small / "part-00.parquet")
            if not fixed:
                for name, stream in (("stream", True), ("memory", False)):
                    toml = work / f"small-{name}.toml"
                    toml.write_text(_stream_config(small, stream, budget))
                    fixed[name] = _peak(toml, work / f"run-small-{name}")
                log(f"fixed cost: {json.dumps(fixed)}")
            disk = sum(f.stat().st_size for f in folder.iterdir())
            row: dict[str, Any] = {
                "rows": n,
                "dataframe_mib": frame_bytes / 2**20,
                "dataframe_over_budget": frame_bytes / 2**20 / budget,
                "parquet_mib": disk / 2**20,
            }
            for name, stream in (("stream", True), ("memory", False)):
                toml = work / f"{n}-{name}.toml"
                toml.write_text(_stream_config(folder, stream, budget))
                got = _peak(toml, work / f"run-{n}-{name}")
                got["growth_mib"] = got["peak_rss_mib"] - fixed[name]["peak_rss_mib"]
                got["examples_per_s"] = got["n_train"] / got["train_seconds"]
                row[name] = got
                log(f"{n} rows, {name}: {json.dumps(got)}")
            row["stream_growth_under_budget"] = row["stream"]["growth_mib"] < budget
            sizes_out.append(row)
            shutil.rmtree(folder)
    return {"budget_mib": budget, "fixed_cost": fixed, "sizes": sizes_out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--part", choices=["ddp", "ann", "ray", "stream"], default="ddp")
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--members", type=int, help="ensemble members (default 2; ray: 5)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--network-gbps", type=float, default=10.0)
    ap.add_argument("--network-latency-us", type=float, default=50.0)
    ap.add_argument("--ann-sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--ann-dim", type=int, default=64)
    ap.add_argument("--ann-clusters", type=int, default=1000)
    ap.add_argument("--ann-spread", type=float, default=0.5)
    ap.add_argument("--ann-target", type=float, default=0.95)
    ap.add_argument("--ann-threads", type=int, default=2)
    ap.add_argument("--stream-budget-mb", type=int, default=64)
    ap.add_argument("--stream-rows", type=int, nargs="+")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.members is None:
        args.members = 5 if args.part == "ray" else 2
    for name in ("users", "items", "rows", "dim", "members", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.rows > args.users * args.items // 2:
        ap.error("--rows must be at most half of --users x --items (unique pairs)")
    parts = {"ddp": ddp, "ann": ann, "ray": ray_part, "stream": stream_part}
    found = parts[args.part](args)
    result = {"part": args.part, **found, "seconds": seconds_since_start()}
    emit(result, args.out)


if __name__ == "__main__":
    main()
