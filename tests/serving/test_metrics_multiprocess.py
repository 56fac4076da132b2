"""``ServiceMetrics`` across worker processes and in one.

prometheus_client picks its value class (in memory, or files in ``PROMETHEUS_MULTIPROC_DIR``)
when it is imported, so the multiprocess scenario runs for real in child processes started
with the variable set: two "workers" count what they served (:func:`serve_worker_a`,
:func:`serve_worker_b`) and exit, a third answers ``exposition()``; the same two workers'
counts in one process give the single-process gauges. No mocks.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import wager
from wager.serving.metrics import MULTIPROC_DIR, ServiceMetrics

_TESTS = Path(__file__).resolve().parents[1]  # tests/: `serving.<this module>` imports
_SRC = Path(wager.__file__).resolve().parents[1]
_POST = ("/v1/recommend", "POST", "200")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]  # (name, labels) -> value
Gauges = dict[tuple[str, str], dict[str, float]]  # (arm, slot) -> gauge name -> value


def serve_worker_a(m: ServiceMetrics) -> None:
    """Worker A: serves v1 then v2; two slates of arm ctl, one click at rank 1."""
    m.set_model("v1")
    m.set_model("v2")
    m.served("ctl", 3, [0.2, 0.1, None])
    m.served("ctl", 2, [0.3, 0.4], [0.35, None])  # the model's own means (recalibrated)
    m.clicks.labels(arm="ctl").inc()
    m.calibration.clicked("ctl", top=True)
    m.requests.labels(*_POST).inc(2)
    m.latency.labels(*_POST).observe(0.003)
    m.latency.labels(*_POST).observe(0.03)


def serve_worker_b(m: ServiceMetrics) -> None:
    """Worker B: serves v1; one slate of ctl (one click below rank 1), one of arm new
    without means."""
    m.set_model("v1")
    m.served("ctl", 2, [0.5, None])
    m.served("new", 2, [None, None])
    m.clicks.labels(arm="ctl").inc()
    m.calibration.clicked("ctl", top=False)
    m.requests.labels(*_POST).inc()
    m.latency.labels(*_POST).observe(0.003)


def _wilson(clicks: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval by its closed form (z = Phi^-1(0.975))."""
    z, p = 1.959963984540054, clicks / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def _gauges(
    n: int, with_mean: int, predicted: float, clicks: int, model: tuple[int, float]
) -> dict[str, float]:
    low, high = _wilson(clicks, n)
    pred = predicted / with_mean if with_mean else math.nan
    return {
        "impressions": n,
        "predicted_ctr": pred,
        "model_predicted_ctr": model[1] / model[0] if model[0] else math.nan,
        "observed_ctr": clicks / n,
        "observed_ctr_low": low,
        "observed_ctr_high": high,
        "within_interval": float(low <= pred <= high),
    }


# the two workers' tallies summed, by hand:
# ctl/all: impressions 3+2+2 = 7, with a mean 2+2+1 = 5, sum of means
#   0.2+0.1+0.3+0.4+0.5 = 1.5 -> predicted 0.3; clicks 2 -> observed 2/7, Wilson
#   [0.0822, 0.6411] holds 0.3
# ctl/top: impressions 3 (rank 1 of each slate), means 0.2, 0.3, 0.5 -> predicted 1/3;
#   clicks 1 -> observed 1/3, Wilson [0.0615, 0.7923]
# new/all: 2 impressions, no mean -> predicted NaN (never within); 0 clicks
# new/top: 1 impression, no mean, 0 clicks
# the model's own means (the served ones where not given): ctl/all 0.2, 0.1, 0.35, 0.5 ->
#   1.15 / 4; ctl/top 0.2, 0.35, 0.5 -> 1.05 / 3; new: none
EXPECTED = {
    ("ctl", "all"): _gauges(7, 5, 1.5, 2, (4, 1.15)),
    ("ctl", "top"): _gauges(3, 3, 1.0, 1, (3, 1.05)),
    ("new", "all"): _gauges(2, 0, 0.0, 0, (0, 0.0)),
    ("new", "top"): _gauges(1, 0, 0.0, 0, (0, 0.0)),
}


def test_the_hand_wilson_values():
    assert _wilson(2, 7) == pytest.approx((0.0822189, 0.6410655), abs=1e-7)
    assert _wilson(1, 3) == pytest.approx((0.0614919, 0.7923404), abs=1e-7)


def _samples(text: str) -> Samples:
    """(sample name, labels) -> value of a Prometheus text exposition."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _calibration(samples: Samples) -> Gauges:
    """(arm, slot) -> gauge name after ``wager_calibration_`` -> value."""
    out: Gauges = {}
    for (name, labels), value in samples.items():
        rest = name.removeprefix("wager_calibration_")
        if rest != name and not rest.startswith("tally_"):
            key = dict(labels)
            out.setdefault((key["arm"], key["slot"]), {})[rest] = value
    return out


def _assert_calibration(got: Gauges, expected: Gauges) -> None:
    assert got.keys() == expected.keys()
    for key, gauges in expected.items():
        assert got[key].keys() == gauges.keys(), key
        for name, value in gauges.items():
            assert got[key][name] == pytest.approx(value, rel=1e-12, nan_ok=True), (key, name)


def _child(code: str, env: dict[str, str]) -> subprocess.Popen[str]:
    env = {**env, "PYTHONPATH": os.pathsep.join([str(_SRC), env.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=_TESTS,
    )  # fmt: skip


def _finish(child: subprocess.Popen[str]) -> str:
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
    return out


def _worker(name: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return _child(
        "import os\n"
        "from serving.test_metrics_multiprocess import " + name + "\n"
        "from wager.serving.metrics import ServiceMetrics\n"
        f"{name}(ServiceMetrics())\n"
        "print(os.getpid())\n",
        env,
    )


def test_exposition_sums_every_worker(tmp_path):
    env = {**os.environ, MULTIPROC_DIR: str(tmp_path)}
    workers = [_worker("serve_worker_a", env), _worker("serve_worker_b", env)]  # at once
    pid_a, pid_b = (_finish(w).strip() for w in workers)
    text = _finish(
        _child(
            "import os, sys\nfrom wager.serving.metrics import ServiceMetrics\n"
            "m = ServiceMetrics()\n"
            "assert m.multiprocess_dir == os.environ['PROMETHEUS_MULTIPROC_DIR']\n"
            "sys.stdout.write(m.exposition().decode())\n",
            env,
        )
    )
    samples = _samples(text)

    def value(name: str, **labels: str) -> float:
        return samples[(name, frozenset(labels.items()))]

    # counters and histograms: the two workers' sums
    assert value("wager_impressions_total", arm="ctl") == 3 + 2 + 2
    assert value("wager_impressions_total", arm="new") == 2
    assert value("wager_predicted_mean_total", arm="ctl") == pytest.approx(1.5, rel=1e-12)
    assert value("wager_feedback_clicks_total", arm="ctl") == 2
    post = dict(zip(("endpoint", "method", "status"), _POST, strict=True))
    assert value("wager_http_requests_total", **post) == 3
    assert value("wager_http_request_duration_seconds_count", **post) == 3
    assert value("wager_http_request_duration_seconds_sum", **post) == pytest.approx(0.036)
    assert value("wager_http_request_duration_seconds_bucket", **post, le="0.005") == 2
    assert value("wager_http_request_duration_seconds_bucket", **post, le="0.05") == 3
    assert value("wager_calibration_tally_impressions_total", arm="ctl", slot="all") == 7
    assert value("wager_calibration_tally_clicks_total", arm="ctl", slot="top") == 1
    # the calibration gauges: from the summed tallies, once (not per worker)
    _assert_calibration(_calibration(samples), EXPECTED)
    # each worker's latest version is 1, A's earlier v1 is 0 (not a stale 1); the process
    # that answered never set a model
    active = {
        (dict(labels)["version"], dict(labels)["pid"]): v
        for (name, labels), v in samples.items()
        if name == "wager_model_active"
    }
    assert active == {("v1", pid_a): 0.0, ("v2", pid_a): 1.0, ("v1", pid_b): 1.0}


def test_single_process_calibration_gauges():
    if MULTIPROC_DIR in os.environ:
        pytest.skip(f"{MULTIPROC_DIR} is set for the test process: not single-process mode")
    m = ServiceMetrics()
    assert m.multiprocess_dir is None
    serve_worker_a(m)
    serve_worker_b(m)
    text = m.exposition()
    assert text == generate_latest(m.registry)
    assert m.content_type.startswith("text/plain; version=")
    samples = _samples(text.decode())
    _assert_calibration(_calibration(samples), EXPECTED)
    snapshot = m.calibration.snapshot()
    assert snapshot.keys() == EXPECTED.keys()
    row = snapshot[("ctl", "all")]  # the snapshot's keys for the same numbers
    assert (row["impressions"], row["clicks"]) == (7, 2)
    assert row["predicted_ctr"] == pytest.approx(0.3, rel=1e-12)
    assert (row["low"], row["high"]) == pytest.approx(_wilson(2, 7), rel=1e-12)
    assert row["within"] == 1.0
    # one series of wager_model_active in one process: the version served now, no pid
    active = {labels: v for (name, labels), v in samples.items() if name == "wager_model_active"}
    assert active == {frozenset({("version", "v1")}): 1.0}


def test_clicks_above_impressions_are_capped():
    m = ServiceMetrics()
    m.served("ctl", 1, [0.5])
    for _ in range(3):  # three click events about one impression
        m.calibration.clicked("ctl", top=True)
    row = m.calibration.snapshot()[("ctl", "top")]
    assert (row["clicks"], row["observed_ctr"], row["high"]) == (1, 1.0, 1.0)


@pytest.mark.parametrize(
    ("set_at_start", "kind", "message"),
    [
        (
            True,
            "ValueError",
            "the environment variable PROMETHEUS_MULTIPROC_DIR='{path}' is not a folder: in "
            "prometheus_client's multiprocess mode every worker keeps its metric values in "
            "files there; create the folder (empty) before the server starts, or unset the "
            "variable for one process's metrics",
        ),
        (
            False,
            "RuntimeError",
            "the environment variable PROMETHEUS_MULTIPROC_DIR='{path}' was set after "
            "prometheus_client was imported, so this process keeps its metric values in memory "
            "and the other workers' /metrics would miss them; set it before the process "
            "starts (as wager serve --workers does) or unset it",
        ),
    ],
    ids=["not-a-folder", "set-after-import"],
)
def test_bad_multiprocess_dir(tmp_path, set_at_start, kind, message):
    env = {k: v for k, v in os.environ.items() if k != MULTIPROC_DIR}
    if set_at_start:  # a folder that does not exist
        path = str(tmp_path / "missing")
        env[MULTIPROC_DIR] = path
        late = ""
    else:  # a folder that exists, set once prometheus_client is imported
        path = str(tmp_path)
        late = f"os.environ[{MULTIPROC_DIR!r}] = {path!r}\n"
    out = _finish(
        _child(
            "import os\nfrom wager.serving.metrics import ServiceMetrics\n" + late + "try:\n"
            "    ServiceMetrics()\nexcept (ValueError, RuntimeError) as e:\n"
            "    print(type(e).__name__, e)\n",
            env,
        )
    )
    assert out.strip() == f"{kind} {message.format(path=path)}"
