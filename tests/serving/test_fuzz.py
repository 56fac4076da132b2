"""Fuzzing from the service's own OpenAPI schema (schemathesis): whatever a client sends that
the schema can describe, or breaks, the answer is never a 5xx."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from serving.tiny_runs import train_registry
from wager.serving.app import create_app
from wager.serving.registry import ModelRegistry
from wager.serving.store import EventStore


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root: Path = tmp_path_factory.mktemp("fuzz")
    registry = train_registry(root, ("v1", "v2"))
    store = EventStore.sqlite(root / "events.db")
    yield schemathesis.openapi.from_asgi(
        "/openapi.json", create_app(ModelRegistry(registry), store, None)
    )
    store.close()


def _fuzz(operation, mode: GenerationMode, seen: Counter[int]) -> None:  # type: ignore[no-untyped-def]
    """40 generated requests of ``operation``; every status code counted in ``seen``."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def no_5xx(case) -> None:  # type: ignore[no-untyped-def]
        response = case.call()
        seen[response.status_code] += 1
        assert response.status_code < 500, (case.method, case.path, case.body, response.text)

    no_5xx()


def test_no_request_gets_a_5xx(api_schema) -> None:  # type: ignore[no-untyped-def]
    """Every operation of /openapi.json, 40 generated requests each, in both of
    schemathesis' modes: requests the schema allows (positive) and requests that break it
    (negative: wrong types, missing fields, out-of-range values)."""
    codes: dict[tuple[str, str], Counter[int]] = {}
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        for result in api_schema.get_all_operations():
            operation = result.ok()
            name = f"{operation.method.upper()} {operation.path}"
            try:
                _fuzz(operation, mode, codes.setdefault((mode.name, name), Counter()))
            except Unsatisfiable:  # an operation without inputs has no negative request
                assert mode is GenerationMode.NEGATIVE, name
    # the fuzz reached the happy path and the checks, not only one of them
    recommend = codes[("POSITIVE", "POST /v1/recommend")]
    assert recommend[200] > 0 and sum(recommend.values()) > recommend[200]
    assert codes[("NEGATIVE", "POST /v1/feedback")][422] > 0
