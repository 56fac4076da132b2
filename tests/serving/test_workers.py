"""``wager serve --workers 2`` for real: two uvicorn worker processes on one port, one
SQLite event store. An activation sent to whichever worker answers reaches both; /metrics
answered by either worker sums both; Ctrl-C stops every process and removes the metrics
folder the parent made."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from serving.conftest import _free_port
from serving.tiny_runs import train_registry


def _call(base: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    method = "GET" if data is None else "POST"
    headers = {"content-type": "application/json"}
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _metric(text: str, name: str) -> float:
    pattern = re.compile(rf"^{name}(\{{[^}}]*\}})? (\S+)$")
    return sum(float(m[2]) for m in map(pattern.match, text.splitlines()) if m is not None)


@pytest.fixture
def two_workers(tmp_path: Path) -> Any:
    registry = train_registry(tmp_path, ("v1", "v2"))
    port = _free_port()
    log = (tmp_path / "serve.log").open("wb")
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    before = _metrics_folders()
    proc = subprocess.Popen(
        [sys.executable, "-m", "wager.cli", "serve", str(registry), "--port", str(port),
         "--workers", "2", "--no-access-log"],
        stdout=log, stderr=log, env=env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 120
        while time.monotonic() < end:
            try:
                if _call(base, "/readyz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail((tmp_path / "serve.log").read_text()[-3000:])
        yield base, proc, tmp_path / "serve.log", before
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def _metrics_folders() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("wager-metrics-")}


def test_two_workers_share_activation_metrics_and_stop_together(two_workers: Any) -> None:
    base, proc, log, before = two_workers
    served: set[str] = set()
    for n in range(20):
        status, text = _call(base, "/v1/recommend", {"user_id": f"u{n % 5}", "k": 2})
        assert status == 200, text
        served.add(json.loads(text)["model_version"])
    assert served == {"v2"}
    status, text = _call(base, "/v1/models/v1/activate", {})
    assert status == 200 and json.loads(text)["active"] == "v1", text
    # the other worker follows within FOLLOW_S = 0.5 s plus one load of the tiny run: wait
    # (at most 60 s) until /metrics shows both worker pids serving v1
    pattern = r'wager_model_active\{pid="(\d+)",version="v1"\} 1\.0'
    end = time.monotonic() + 60
    while len(re.findall(pattern, _call(base, "/metrics")[1])) < 2 and time.monotonic() < end:
        time.sleep(0.1)
    versions = [json.loads(_call(base, "/v1/recommend", {"user_id": "u1", "k": 2})[1])
                ["model_version"] for _ in range(20)]  # fmt: skip
    assert set(versions) == {"v1"}
    for _ in range(10):  # whichever worker answers, the sums are both workers'
        text = _call(base, "/metrics")[1]
        assert _metric(text, "wager_impressions_total") == 80.0  # 40 requests x k = 2
        assert len(set(re.findall(pattern, text))) == 2  # each worker says it serves v1
    assert len(_metrics_folders()) == len(before) + 1  # the parent's, while serving
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    assert _metrics_folders() == before  # removed by the parent that made it
    assert "2 worker processes" in log.read_text()
