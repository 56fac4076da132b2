"""How the service refuses a request: the named errors, the JSON each becomes (422 with
``detail`` naming the field, 401 / 403, 404, 409, 503) and the store-call wrapper that turns
any database failure into a 503."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from wager.errors import WagerError
from wager.runs import RunError
from wager.serving.auth import AuthError
from wager.serving.registry import UnknownVersionError

log = logging.getLogger("wager.serving")

Loc = tuple[str | int, ...]


class RequestError(WagerError, ValueError):
    """A request the service refuses after validation of its shape: ``status`` (422 unless
    told) with a message naming the field at ``loc`` (e.g. ("body", "k"))."""

    def __init__(self, loc: Loc, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.loc = loc
        self.status = status


class StoreUnavailableError(WagerError, RuntimeError):
    """The event store failed to commit; the request is answered 503 and nothing served."""


def error_detail(loc: Sequence[str | int], msg: str, kind: str = "value_error") -> dict[str, Any]:
    """One entry of a 422's ``detail`` list, in FastAPI's shape: where (e.g. ["body", "k"]),
    what is wrong and its kind."""
    return {"loc": list(loc), "msg": msg, "type": kind}


async def _on_validation(request: Request, exc: Exception) -> Response:
    """FastAPI's 422 without echoing the input (which may hold NaN, not JSON)."""
    assert isinstance(exc, RequestValidationError)
    errors = [error_detail(e["loc"], e["msg"], e["type"]) for e in exc.errors()]
    return JSONResponse({"detail": errors}, status_code=422)


async def _on_request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    return JSONResponse({"detail": [error_detail(exc.loc, str(exc))]}, status_code=exc.status)


async def _on_auth(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AuthError)
    return JSONResponse({"detail": str(exc)}, status_code=exc.status)


async def _on_unknown_version(request: Request, exc: Exception) -> Response:
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def _on_run_error(request: Request, exc: Exception) -> Response:
    return JSONResponse({"detail": f"{exc} (the active version is unchanged)"}, status_code=409)


async def _on_store(request: Request, exc: Exception) -> Response:
    return JSONResponse({"detail": str(exc)}, status_code=503)


async def _on_value_error(request: Request, exc: Exception) -> Response:
    """A ValueError from inside wager (e.g. a context value a feature cannot take): the
    request's fault, reported with its message instead of a 500."""
    log.info("request refused: %s", exc)
    return JSONResponse({"detail": [error_detail(["body"], str(exc))]}, status_code=422)


#: the app's exception handlers: exception type -> the JSON response it becomes
HANDLERS: dict[type[Exception], Callable[[Request, Exception], Awaitable[Response]]] = {
    RequestValidationError: _on_validation,
    RequestError: _on_request_error,
    AuthError: _on_auth,
    UnknownVersionError: _on_unknown_version,
    RunError: _on_run_error,
    StoreUnavailableError: _on_store,
    ValueError: _on_value_error,
    WagerError: _on_value_error,
}


def commit(action: Callable[[], Any], what: str) -> Any:
    """Run a store call; any failure becomes :class:`StoreUnavailableError` (503)."""
    try:
        return action()
    except Exception as exc:  # the store's driver errors are not wager's to enumerate
        log.exception("event store failed while %s", what)
        raise StoreUnavailableError(
            f"the event store failed while {what} ({type(exc).__name__}); nothing was "
            "acknowledged, retry later"
        ) from exc


async def commit_future(future: Future[Any] | asyncio.Future[Any], what: str) -> Any:
    """Await a store call running elsewhere (e.g. a group commit); any failure becomes
    :class:`StoreUnavailableError` (503), as with :func:`commit`."""
    try:
        return await (future if isinstance(future, asyncio.Future) else asyncio.wrap_future(future))
    except Exception as exc:  # the store's driver errors are not wager's to enumerate
        log.error("event store failed while %s: %s", what, exc, exc_info=exc)
        raise StoreUnavailableError(
            f"the event store failed while {what} ({type(exc).__name__}); nothing was "
            "acknowledged, retry later"
        ) from exc
