"""The HTTP API against a tiny trained registry (two versions) and the real event store (a
SQLite file per test):
responses checked against the same runs loaded with ``Recommender.load``; impressions
logged as served; every bad request a 4xx naming the field; keys; metrics; hot swap."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serving.tiny_runs import train_registry
from wager.recommender import Recommender
from wager.serving import app as app_module
from wager.serving.app import Limits, create_app
from wager.serving.auth import ApiKeys
from wager.serving.registry import ModelRegistry
from wager.serving.store import EventStore

KEYS = {"rec-key": ["recommend"], "fb-key": ["feedback"], "admin-key": ["admin"]}


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_registry(tmp_path_factory.mktemp("app"), ("v1", "v2"))


@pytest.fixture
def log(sqlite_store: EventStore) -> EventStore:
    """The real event store, in a new SQLite file per test."""
    return sqlite_store


@pytest.fixture
def client(registry_dir: Path, log: EventStore) -> TestClient:
    return TestClient(create_app(ModelRegistry(registry_dir), log, None))


def _recommend(client: TestClient, **body: Any) -> dict[str, Any]:
    r = client.post("/v1/recommend", json={"user_id": "u1", **body})
    assert r.status_code == 200, r.text
    return r.json()


def _errors(response: Any, status: int = 422) -> list[tuple[list[Any], str]]:
    assert response.status_code == status, response.text
    return [(d["loc"], d["msg"]) for d in response.json()["detail"]]


# ----------------------------------------------------------------------------- recommend


def test_request_ids_sort_by_time_and_differ():
    """32 hex digits, the first 12 the millisecond clock: later ids sort after earlier ones
    (the event store's index grows at its end), ids of the same millisecond still differ."""
    ids = []
    for _ in range(3):
        ids += [app_module._random.request_id() for _ in range(100)]
        time.sleep(0.002)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids) and len(set(ids)) == len(ids)
    stamps = [int(i[:12], 16) for i in ids]
    assert stamps == sorted(stamps)
    assert abs(stamps[-1] - time.time() * 1000) < 60_000
    assert ids[0] < ids[-1]


def test_greedy_slate_is_the_top_k_by_mean_with_propensity_one(client, registry_dir):
    out = _recommend(client, k=4, exclude_seen=False)
    assert set(out) == {"request_id", "model_version", "arm", "policy", "cold_start", "items"}
    assert out["model_version"] == "v2" and out["arm"] == "" and out["policy"] == "greedy"
    assert out["cold_start"] is False and re.fullmatch(r"[0-9a-f]{32}", out["request_id"])
    rec = Recommender.load(registry_dir / "v2")
    items = np.asarray(rec.scorer_.catalogue.items, dtype=object)
    pred = rec.predict(["u1"] * len(items), items)
    order = np.argsort(-pred.mean.numpy(), kind="stable")[:4]
    got = out["items"]
    assert [i["item_id"] for i in got] == items[order].tolist()
    assert [i["rank"] for i in got] == [1, 2, 3, 4]
    np.testing.assert_allclose([i["mean"] for i in got], pred.mean.numpy()[order], rtol=1e-6)
    np.testing.assert_allclose([i["std"] for i in got], pred.std.numpy()[order], rtol=1e-6)
    iv = pred.interval(0.9)
    np.testing.assert_allclose([i["low"] for i in got], iv.low.numpy()[order], rtol=1e-6)
    np.testing.assert_allclose([i["high"] for i in got], iv.high.numpy()[order], rtol=1e-6)
    assert [i["score"] for i in got] == [i["mean"] for i in got]
    assert [i["propensity"] for i in got] == [1.0] * 4
    assert all(i["confidence"] is None for i in got)  # a rating run without a relevance step


def test_ucb_scores_are_mean_plus_beta_std_and_rank_the_slate(client):
    got = _recommend(client, k=5, policy="ucb", beta=2.0, exclude_seen=False)["items"]
    scores = [i["score"] for i in got]
    np.testing.assert_allclose(scores, [i["mean"] + 2.0 * i["std"] for i in got], rtol=1e-9)
    assert scores == sorted(scores, reverse=True)
    assert [i["propensity"] for i in got] == [1.0] * 5


@pytest.mark.parametrize(
    ("policy", "extra"), [("thompson", {}), ("epsilon_greedy", {"epsilon": 0.5})]
)
def test_random_policies_give_propensities_in_0_1(client, policy, extra):
    out = _recommend(client, k=4, policy=policy, **extra)
    props = [i["propensity"] for i in out["items"]]
    assert len(props) == 4 and all(0 < p <= 1 for p in props)
    assert out["policy"].startswith(policy)


def test_impressions_are_logged_as_served(client, log):
    out = _recommend(client, k=3, policy="ucb", beta=1.0)
    logged = log.impressions_frame().itertuples()
    impressions = list(logged)
    assert len(impressions) == 3
    for imp, item in zip(impressions, out["items"], strict=True):
        assert (imp.request_id, imp.user_id, imp.item_id, imp.position) == (
            out["request_id"], "u1", item["item_id"], item["rank"]
        )  # fmt: skip
        assert (imp.mean, imp.std, imp.score, imp.propensity) == (
            item["mean"], item["std"], item["score"], item["propensity"]
        )  # fmt: skip
        assert (imp.policy, imp.arm, imp.model_version) == ("ucb(beta=1.0)", "", "v2")


def test_excluded_and_seen_items_are_never_served(client, registry_dir):
    rec = Recommender.load(registry_dir / "v2")
    seen = set(rec.recommend(["u1"], 12, exclude_seen=False)["item"]) - set(
        rec.recommend(["u1"], 12)["item"]
    )
    got = _recommend(client, k=12, exclude=["i1", "i2", "nope"])["items"]
    served = {i["item_id"] for i in got}
    assert served.isdisjoint({"i1", "i2"} | seen)
    assert served == {f"i{i}" for i in range(12)} - {"i1", "i2"} - seen


def test_unknown_user_is_served_through_oov_with_wider_std(client):
    known = [i["std"] for i in _recommend(client, k=12, exclude_seen=False)["items"]]
    out = _recommend(client, user_id="never-seen", k=12, exclude_seen=False)
    assert out["cold_start"] is True and len(out["items"]) == 12
    cold = [i["std"] for i in out["items"]]
    assert np.median(cold) >= np.median(known)


def test_no_nan_reaches_json_and_a_nan_body_is_a_422(client):
    r = client.post(
        "/v1/recommend",
        content=b'{"user_id": "u1", "policy": "ucb", "beta": NaN}',
        headers={"content-type": "application/json"},
    )
    assert _errors(r) == [(["body", "beta"], "Input should be a finite number")]


@pytest.mark.parametrize(
    ("body", "loc", "message"),
    [
        ({"k": 0}, ["body", "k"], "Input should be greater than or equal to 1"),
        ({"k": 1001}, ["body", "k"], "k must be <= 1000, got 1001"),
        ({"policy": "softmaxx"}, ["body", "policy"], "Input should be 'greedy', 'ucb', "
         "'thompson' or 'epsilon_greedy'"),
        ({"policy": "ucb"}, ["body", "beta"], "policy 'ucb' needs beta, e.g. beta=1.0"),
        ({"beta": 1.0}, ["body", "beta"], "policy 'greedy' takes no parameters; beta does "
         "not apply to it (drop it)"),
        ({"policy": "epsilon_greedy", "epsilon": 2}, ["body", "epsilon"],
         "Input should be less than or equal to 1"),
        ({"context": {"hour": 3}}, ["body", "context"], "context key 'hour' is not a context "
         "column of the schema (context columns: none)."),
        ({"user_id": ""}, ["body", "user_id"], "String should have at least 1 character"),
        ({"kk": 3}, ["body", "kk"], "Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_bad_recommend_requests_name_the_field(client, body, loc, message):
    r = client.post("/v1/recommend", json={"user_id": "u1", **body})
    assert _errors(r) == [(loc, message)]


def test_a_body_over_the_limit_is_413(registry_dir, log):
    client = TestClient(create_app(ModelRegistry(registry_dir), log, None,
                                   limits=Limits(max_body_bytes=100)))  # fmt: skip
    r = client.post("/v1/recommend", json={"user_id": "u1", "exclude": ["x" * 200]})
    assert r.status_code == 413 and "limit of 100 bytes" in r.json()["detail"]
    assert _recommend(client, k=1)["items"]  # small bodies still pass


def test_a_failing_store_serves_nothing(client, log):
    log.close()  # the database is gone: every call to it fails
    r = client.post("/v1/recommend", json={"user_id": "u1"})
    assert r.status_code == 503 and "event store failed while logging impressions" in r.text
    assert client.get("/readyz").status_code == 503


# ----------------------------------------------------------------------------- score


def test_score_matches_predict(client, registry_dir):
    r = client.post("/v1/score", json={"user_id": "u3", "item_ids": ["i4", "i0"]})
    assert r.status_code == 200, r.text
    pred = Recommender.load(registry_dir / "v2").predict(["u3", "u3"], ["i4", "i0"])
    got = r.json()["items"]
    assert [i["item_id"] for i in got] == ["i4", "i0"]
    np.testing.assert_allclose([i["mean"] for i in got], pred.mean.numpy(), rtol=1e-6)
    np.testing.assert_allclose([i["std"] for i in got], pred.std.numpy(), rtol=1e-6)


def test_score_names_unknown_items(client):
    r = client.post("/v1/score", json={"user_id": "u3", "item_ids": ["i4", "zz", "yy"]})
    assert _errors(r) == [
        (["body", "item_ids"], "2 item id(s) not in the model's catalogue: 'zz', 'yy'")
    ]


# ----------------------------------------------------------------------------- feedback


def test_feedback_is_stored_once_per_event_id(client, log):
    out = _recommend(client, k=2)
    rid, (a, b) = out["request_id"], [i["item_id"] for i in out["items"]]
    events = [
        {"event_id": "e1", "request_id": rid, "item_id": a, "click": 1},
        {"event_id": "e2", "request_id": rid, "item_id": b, "rating": 4.5},
    ]
    r = client.post("/v1/feedback", json={"events": events})
    assert r.json() == {"stored": 2, "duplicates": 0}
    r = client.post("/v1/feedback", json={"events": events})
    assert r.json() == {"stored": 0, "duplicates": 2}
    stored = log.feedback_frame().set_index("event_id")
    assert sorted(stored.index) == ["e1", "e2"] and stored.loc["e2", "rating"] == 4.5


def test_feedback_about_unserved_items_is_a_422_naming_the_events(client, log):
    out = _recommend(client, k=1)
    rid, item = out["request_id"], out["items"][0]["item_id"]
    events = [
        {"event_id": "e1", "request_id": rid, "item_id": item, "click": 0},
        {"event_id": "e2", "request_id": "no-such-request", "item_id": item, "click": 1},
    ]
    r = client.post("/v1/feedback", json={"events": events})
    assert _errors(r) == [
        (["body", "events", 1], f"request 'no-such-request' never served item '{item}': send "
         "feedback only for items of a /v1/recommend response, with its request_id")
    ]  # fmt: skip
    assert (r.json()["stored"], r.json()["duplicates"]) == (1, 0)  # the known one is stored


@pytest.mark.parametrize(
    ("event", "loc", "message"),
    [
        ({"click": 1, "rating": 3}, ["body", "events", 0], "Value error, give exactly one of "
         "click (0 or 1) or rating; this event has both click and rating"),
        ({}, ["body", "events", 0], "Value error, give exactly one of click (0 or 1) or "
         "rating; this event has neither"),
        ({"click": 2}, ["body", "events", 0, "click"], "Input should be 0 or 1"),
    ],
)  # fmt: skip
def test_bad_feedback_events_name_the_index(client, event, loc, message):
    e = {"event_id": "e", "request_id": "r", "item_id": "i1", **event}
    assert _errors(client.post("/v1/feedback", json={"events": [e]})) == [(loc, message)]


# ----------------------------------------------------------------------------- keys


def test_keys_401_403_and_scopes(registry_dir, log):
    client = TestClient(create_app(ModelRegistry(registry_dir), log, ApiKeys(KEYS)))
    body = {"user_id": "u1"}
    assert client.post("/v1/recommend", json=body).status_code == 401
    assert client.post("/v1/recommend", json=body, headers={"x-api-key": "bad"}).status_code == 401
    fb, rec, admin = ({"x-api-key": k} for k in ("fb-key", "rec-key", "admin-key"))
    r = client.post("/v1/recommend", json=body, headers=fb)
    assert r.status_code == 403 and "lacks the 'recommend' scope" in r.json()["detail"]
    assert client.post("/v1/recommend", json=body, headers=rec).status_code == 200
    assert client.get("/v1/models", headers=rec).status_code == 403
    assert client.post("/v1/models/v1/activate", headers=rec).status_code == 403
    assert client.post("/v1/feedback", json={"events": []}, headers=rec).status_code == 403
    assert client.post("/v1/recommend", json=body, headers=admin).status_code == 200
    assert client.get("/v1/models", headers=admin).json() == {
        "active": "v2",
        "versions": ["v1", "v2"],
    }
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert client.get(path).status_code == 200, path


# ----------------------------------------------------------------------------- models


def test_activate_switches_the_served_version(client):
    r = client.post("/v1/models/v1/activate")
    assert r.json() == {"active": "v1", "previous": "v2"}
    assert _recommend(client)["model_version"] == "v1"
    assert client.get("/v1/models").json()["active"] == "v1"


@pytest.mark.parametrize("version", ["v9", "v1%00", "%2E%2E", "v1.bak"])
def test_activate_refuses_unknown_and_path_like_versions(client, version):
    r = client.post(f"/v1/models/{version}/activate")
    assert r.status_code == 404
    assert r.json()["detail"].endswith("of the registry; available: v1, v2")


@pytest.mark.parametrize(
    "path", ["/v1/models/../v1/activate", "/v1/models/..%2Fv1/activate", "/v1/models/../activate"]
)
def test_traversal_urls_match_no_route(client, path):
    assert 400 <= client.post(path).status_code < 500
    assert client.get("/v1/models").json()["active"] == "v2"


# ----------------------------------------------------------------------------- health


def test_health_and_openapi(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "model_version": "v2",
                                            "event_store": True}  # fmt: skip
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/recommend", "/v1/score", "/v1/feedback", "/v1/models",
            "/v1/models/{version}/activate"} <= set(paths)  # fmt: skip


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    series = f"{name}{{{want}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{series} not in /metrics")


def test_metrics_count_what_was_served(client):
    slates = [_recommend(client, k=3) for _ in range(2)]
    client.post("/v1/recommend", json={"user_id": "u1", "k": 0})
    first = slates[0]
    events = [
        {"event_id": f"e{n}", "request_id": first["request_id"], "item_id": i["item_id"],
         "click": int(n == 0)}
        for n, i in enumerate(first["items"])
    ]  # fmt: skip
    client.post("/v1/feedback", json={"events": events})
    text = client.get("/metrics").text
    post = {"endpoint": "/v1/recommend", "method": "POST"}
    assert _metric(text, "wager_http_requests_total", **post, status="200") == 2
    assert _metric(text, "wager_http_requests_total", **post, status="422") == 1
    assert _metric(text, "wager_http_request_duration_seconds_count", **post, status="200") == 2
    assert _metric(text, "wager_impressions_total", arm="") == 6
    predicted = sum(i["mean"] for s in slates for i in s["items"])
    assert _metric(text, "wager_predicted_mean_total", arm="") == pytest.approx(predicted)
    assert _metric(text, "wager_feedback_events_total", arm="", kind="click") == 3
    assert _metric(text, "wager_feedback_clicks_total", arm="") == 1
    assert _metric(text, "wager_model_active", version="v2") == 1


def test_feedback_metrics_count_each_stored_event_once(client, log):
    out = _recommend(client, k=3)
    rid, (a, b, c) = out["request_id"], [i["item_id"] for i in out["items"]]
    first = [
        {"event_id": "e0", "request_id": rid, "item_id": a, "click": 1},
        {"event_id": "e1", "request_id": rid, "item_id": b, "click": 0},
    ]
    # the first batch again, plus two new events (a click and a rating), one repeated
    # within the batch, and one about an item never served (a 422, never counted)
    second = [
        *first,
        {"event_id": "e2", "request_id": rid, "item_id": c, "click": 1},
        {"event_id": "e3", "request_id": rid, "item_id": c, "rating": 2.0},
        {"event_id": "e2", "request_id": rid, "item_id": a, "click": 1},
        {"event_id": "e9", "request_id": rid, "item_id": "never-served", "click": 1},
    ]
    assert client.post("/v1/feedback", json={"events": first}).json() == {
        "stored": 2, "duplicates": 0}  # fmt: skip
    for stored, duplicates in ((2, 3), (0, 5)):  # e2 and e3 are new only the first time
        r = client.post("/v1/feedback", json={"events": second})
        assert r.status_code == 422
        assert (r.json()["stored"], r.json()["duplicates"]) == (stored, duplicates)
    # distinct stored events: e0 (click 1), e1 (click 0), e2 (click 1), e3 (rating)
    feedback = log.feedback_frame()
    assert sorted(feedback["event_id"]) == ["e0", "e1", "e2", "e3"]
    clicks = int((feedback["click"] == 1).sum())
    text = client.get("/metrics").text
    assert _metric(text, "wager_feedback_clicks_total", arm="") == clicks == 2
    assert _metric(text, "wager_feedback_events_total", arm="", kind="click") == 3
    assert _metric(text, "wager_feedback_events_total", arm="", kind="rating") == 1
    assert _metric(text, "wager_feedback_duplicates_total") == 0 + 3 + 5
    assert _metric(text, "wager_feedback_unknown_total") == 2
    assert "unattributed" not in text


# ----------------------------------------------------------------------------- hot swap


def test_hot_swap_under_load_fails_no_request(registry_dir, log):
    # server errors come back as 500s here (not raised in the sending thread)
    app = create_app(ModelRegistry(registry_dir), log, None)
    client = TestClient(app, raise_server_exceptions=False)
    versions: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def send() -> None:
        while not stop.is_set():
            r = client.post("/v1/recommend", json={"user_id": "u2", "k": 3})
            if r.status_code != 200:
                failures.append(r.text)
            else:
                versions.append(r.json()["model_version"])

    def wait_for(n: int) -> None:
        deadline = time.monotonic() + 60
        while len(versions) + len(failures) < n and time.monotonic() < deadline:
            stop.wait(0.01)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for n, version in enumerate(("v1", "v2", "v1"), 1):
        wait_for(10 * n)
        assert client.post(f"/v1/models/{version}/activate").status_code == 200
    wait_for(40)
    stop.set()
    for t in threads:
        t.join()
    assert failures == []
    assert {"v1", "v2"} <= set(versions) and len(versions) >= 40


def test_integer_ids_are_taken_as_their_text_and_other_types_are_named(client):
    as_int = client.post("/v1/recommend", json={"user_id": 42, "k": 2, "exclude": [5]})
    as_text = client.post("/v1/recommend", json={"user_id": "42", "k": 2, "exclude": ["5"]})
    assert as_int.status_code == as_text.status_code == 200, as_int.text
    assert as_int.json()["cold_start"] is True  # "42" is not one of the tiny run's users
    for bad in (True, 1.5, None, ["u1"]):
        errors = _errors(client.post("/v1/recommend", json={"user_id": bad, "k": 2}))
        assert errors and all(loc == ["body", "user_id"] for loc, _ in errors), errors
