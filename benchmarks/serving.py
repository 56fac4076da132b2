"""Serving benchmarks (issue 16). ``--part durability``: no acknowledged feedback is lost or
stored twice when the server is killed with SIGKILL mid-load.

    python benchmarks/serving.py --part durability [--db sqlite|postgresql|both]
        [--events 10000] [--clients 32] [--run RUN] [--out results.json]

Per database: trains a tiny one-version registry (``tests/serving/tiny_runs.py``; or serves
``--run``), starts ``wager serve --insecure`` as a real subprocess (uvicorn) on a free
loopback port, gets ``events / 20`` request ids from ``/v1/recommend`` (k = 5), then
``--clients`` threads (one httpx client each) send ``--events`` feedback events in batches
of 1-5. When about half the events are acknowledged the server is killed with SIGKILL and
restarted on the same database; clients retry every batch that was not acknowledged (a
connection error, a 5xx) until it is. At the end the database is read: acknowledged events
lost (must be 0), event ids stored twice (must be 0), events stored, stored values that
differ from those sent, and the events committed before the kill whose acknowledgement never
arrived (their retries came back as duplicates).

PostgreSQL: a throwaway server (initdb / pg_ctl of the OS package, fsync on) started with
the helpers of ``tests/serving/conftest.py``. JSON on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))
from _common import emit, log  # noqa: E402

K = 5  # items per recommendation
RETRY_DEADLINE_S = 120.0  # a batch not acknowledged after this long fails the run


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL server (fsync on) on a free loopback port; yields a database
    URL, stops and removes the server on exit."""
    import pwd

    from serving.conftest import (
        _OS_USER,
        _PG_USER,
        _as_server_user,
        _free_port,
        _postgres_bindir,
        _run,
    )

    bindir = _postgres_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL binaries not found: apt-get install -y postgresql")
    root = Path(tempfile.mkdtemp(prefix="wager-bench-pg-"))
    data, sockets, server_log = root / "data", root / "sock", root / "server.log"
    sockets.mkdir()
    if os.geteuid() == 0:
        owner = pwd.getpwnam(_OS_USER)
        for path in (root, sockets):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    port, started = _free_port(), False
    pg_ctl = str(bindir / "pg_ctl")
    try:
        _run([str(bindir / "initdb"), "-D", str(data), "-U", _PG_USER, "-A", "trust", "-E",
              "UTF8", "--locale=C"], "initdb")  # fmt: skip
        options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1"
        _run([pg_ctl, "-D", str(data), "-l", str(server_log), "-o", options, "-w", "start"],
             "pg_ctl start", server_log)  # fmt: skip
        started = True
        _run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", _PG_USER,
              "wager_bench"], "createdb")  # fmt: skip
        yield f"postgresql+psycopg://{_PG_USER}@127.0.0.1:{port}/wager_bench"
    finally:
        if started:
            subprocess.run(
                _as_server_user([pg_ctl, "-D", str(data), "-m", "fast", "stop"]),
                capture_output=True,
                timeout=120,
            )
        shutil.rmtree(root, ignore_errors=True)


class Server:
    """``wager serve`` as a subprocess on a fixed loopback port, logging to a file."""

    def __init__(self, registry: Path, db: str, port: int, log_file: Path) -> None:
        self.args = [sys.executable, "-m", "wager.cli", "serve", str(registry), "--host",
                     "127.0.0.1", "--port", str(port), "--db", db, "--insecure"]  # fmt: skip
        self.base = f"http://127.0.0.1:{port}"
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 90.0) -> float:
        """Start and wait until ``/readyz`` answers 200; returns the seconds it took."""
        t0 = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
        with self.log_file.open("ab") as sink:
            self.proc = subprocess.Popen(self.args, stdout=sink, stderr=sink, env=env)
        while time.perf_counter() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise SystemExit(
                    f"wager serve exited ({self.proc.returncode}); see {self.log_file}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/readyz", timeout=2.0).status_code == 200:
                    return time.perf_counter() - t0
            time.sleep(0.1)
        raise SystemExit(f"wager serve not ready after {timeout_s} s; see {self.log_file}")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, in-flight requests die unanswered."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def request_ids(base: str, n_requests: int, clients: int) -> list[tuple[str, list[str]]]:
    """(request_id, the items shown) of ``n_requests`` recommendations to users u0..u29."""

    def one(n: int) -> tuple[str, list[str]]:
        body = {"user_id": f"u{n % 30}", "k": K, "exclude_seen": False}
        r = httpx.post(f"{base}/v1/recommend", json=body, timeout=30.0)
        r.raise_for_status()
        out = r.json()
        return out["request_id"], [i["item_id"] for i in out["items"]]

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(n_requests)))


@dataclass
class Load:
    """Shared state of the feedback clients."""

    batches: queue.Queue[list[dict[str, Any]]]
    total: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: set[str] = field(default_factory=set)
    stored_reported: int = 0
    duplicates_reported: int = 0
    retried_batches: int = 0
    failures: list[str] = field(default_factory=list)
    half: threading.Event = field(default_factory=threading.Event)
    ack_times: list[float] = field(default_factory=list)


def client_loop(load: Load, base: str) -> None:
    """Send batches until the queue is empty; retry a batch until it is acknowledged."""
    with httpx.Client(base_url=base, timeout=30.0) as client:
        while True:
            try:
                batch = load.batches.get_nowait()
            except queue.Empty:
                return
            deadline, tries = time.perf_counter() + RETRY_DEADLINE_S, 0
            while True:
                tries += 1
                try:
                    r = client.post("/v1/feedback", json={"events": batch})
                except httpx.TransportError:
                    r = None
                if r is not None and r.status_code == 200:
                    body = r.json()
                    with load.lock:
                        load.acked.update(e["event_id"] for e in batch)
                        load.stored_reported += body["stored"]
                        load.duplicates_reported += body["duplicates"]
                        load.retried_batches += tries > 1
                        load.ack_times.append(time.perf_counter())
                        if len(load.acked) >= load.total / 2:
                            load.half.set()
                    break
                if r is not None and r.status_code < 500:
                    with load.lock:
                        load.failures.append(f"{r.status_code}: {r.text[:200]}")
                    break
                if time.perf_counter() > deadline:
                    with load.lock:
                        load.failures.append("batch not acknowledged before the deadline")
                    break
                time.sleep(0.05)


def make_events(
    shown: list[tuple[str, list[str]]], n_events: int, seed: int
) -> list[list[dict[str, Any]]]:
    """``n_events`` events on random impressions (clicks and ratings), cut into batches of
    1-5 events."""
    rng = random.Random(seed)
    events = []
    for n in range(n_events):
        rid, items = shown[rng.randrange(len(shown))]
        event: dict[str, Any] = {"event_id": f"e{n:06d}", "request_id": rid,
                                 "item_id": rng.choice(items)}  # fmt: skip
        if rng.random() < 0.8:
            event["click"] = rng.randint(0, 1)
        else:
            event["rating"] = float(rng.randint(1, 5))
        events.append(event)
    batches, start = [], 0
    while start < len(events):
        size = rng.randint(1, 5)
        batches.append(events[start : start + size])
        start += size
    return batches


def check_database(db: str, sent: dict[str, dict[str, Any]], acked: set[str]) -> dict[str, Any]:
    """What the database holds against what was sent and acknowledged."""
    from wager.serving.store import EventStore

    with EventStore(db) as store:
        stored = store.feedback_frame()
    ids = stored["event_id"].tolist()
    by_id = stored.set_index("event_id", drop=False)
    mismatched = 0
    for event_id in set(ids) & set(sent):
        row, want = by_id.loc[event_id], sent[event_id]
        click = float(want["click"]) if "click" in want else math.nan
        rating = float(want["rating"]) if "rating" in want else math.nan
        same = (
            row["request_id"] == want["request_id"]
            and row["item_id"] == want["item_id"]
            and (row["click"] == click or (math.isnan(click) and math.isnan(row["click"])))
            and (row["rating"] == rating or (math.isnan(rating) and math.isnan(row["rating"])))
        )
        mismatched += not same
    return {
        "stored": len(ids),
        "acknowledged_lost": len(acked - set(ids)),
        "duplicated_event_ids": len(ids) - len(set(ids)),
        "stored_not_sent": len(set(ids) - set(sent)),
        "stored_values_differing": mismatched,
    }


def durability(registry: Path, db: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One kill -9 run against the database ``db``."""
    from serving.conftest import _free_port

    server = Server(registry, db, _free_port(), work / f"serve-{db.split(':')[0]}.log")
    log(f"{db.split(':')[0]}: starting wager serve on {server.base}")
    ready_s = server.start()
    try:
        shown = request_ids(server.base, max(1, args.events // 20), min(args.clients, 8))
        batches = make_events(shown, args.events, args.seed)
        sent = {e["event_id"]: e for b in batches for e in b}
        load = Load(batches=queue.Queue(), total=len(sent))
        for b in batches:
            load.batches.put(b)
        log(f"{len(shown)} requests served; sending {len(sent)} events in {len(batches)} batches")
        t0 = time.perf_counter()
        threads = [
            threading.Thread(target=client_loop, args=(load, server.base), daemon=True)
            for _ in range(args.clients)
        ]
        for t in threads:
            t.start()
        load.half.wait(timeout=RETRY_DEADLINE_S)
        with load.lock:
            acked_at_kill = len(load.acked)
        t_kill = time.perf_counter()
        server.kill()
        log(f"SIGKILL after {acked_at_kill} acknowledged events ({t_kill - t0:.1f} s); restarting")
        restart_s = server.start()
        log(f"ready again after {restart_s:.1f} s; clients retry what was not acknowledged")
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
    finally:
        server.stop()
    result = check_database(db, sent, load.acked)
    before = sum(1 for t in load.ack_times if t < t_kill)
    result.update(
        events=len(sent),
        batches=len(batches),
        clients=args.clients,
        requests=len(shown),
        acknowledged=len(load.acked),
        acknowledged_at_kill=acked_at_kill,
        retried_batches=load.retried_batches,
        committed_unacknowledged=result["stored"] - load.stored_reported,
        duplicates_reported=load.duplicates_reported,
        failures=load.failures[:5],
        first_ready_s=round(ready_s, 2),
        kill_to_ready_s=round(restart_s, 2),
        total_s=round(elapsed, 2),
        batches_per_s_before_kill=round(before / (t_kill - t0), 1),
        ok=not load.failures
        and result["acknowledged_lost"] == 0
        and result["duplicated_event_ids"] == 0
        and result["stored"] == len(sent)
        and result["stored_values_differing"] == 0,
    )
    log(f"{result}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["durability"], required=True)
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--run", type=Path, help="serve this run (default: train a tiny one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wager-bench-serving-"))
    try:
        if args.run is not None:
            registry = args.run
        else:
            import torch

            from serving.tiny_runs import train_registry

            torch.set_num_threads(1)
            log("training the tiny registry")
            registry = train_registry(work, ("v1",))
        result: dict[str, Any] = {"part": "durability", "events": args.events}
        if args.db in ("sqlite", "both"):
            result["sqlite"] = durability(registry, f"sqlite:///{work / 'events.db'}", args, work)
        if args.db in ("postgresql", "both"):
            with postgres_server() as url:
                result["postgresql"] = durability(registry, url, args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    emit(result, args.out)


if __name__ == "__main__":
    main()
