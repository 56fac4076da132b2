"""``wager serve``: the recommendation service over HTTP (extra ``[serve]``).

Everything is checked before anything is served: the flags, the API keys, the rule that a
service without keys listens only on a loopback address (unless ``--insecure``), the run or
registry folder (the version served first is loaded and verified), and the event database.
Then uvicorn serves :func:`wager.serving.app.create_app`, logging JSON lines to stderr
(one object per line: ``ts``, ``level``, ``logger`` and ``msg``, or ``client``, ``method``,
``path``, ``status`` for an access line).

Keys come from ``--keys FILE`` or the environment variable ``WAGER_API_KEYS`` (never both);
see :mod:`wager.serving.auth`. The event database defaults to SQLite in ``events.db``: in
the registry folder when ``RUN_OR_REGISTRY`` is a folder of runs, beside the run folder
when it is one run (wager never writes inside a run folder).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from wager.cli.common import CliError, _flag_error, app, err_console

if TYPE_CHECKING:
    from wager.serving.auth import ApiKeys
    from wager.serving.cache import CandidateCache
    from wager.serving.experiments import Experiment
    from wager.serving.precomputed import PrecomputedTable
    from wager.serving.registry import ModelRegistry

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
_DB_SCHEMES = ("sqlite://", "postgresql://", "postgresql+psycopg://")
MAX_WORKERS = 64
"""Most server processes ``--workers`` starts."""
FOLLOW_S = 0.2
"""Seconds between a worker's reads of the stored active version (``--workers`` > 1)."""

# options of `wager serve` (module-level so that serve() stays short)
_Experiment = Annotated[
    Path | None,
    typer.Option(
        "--experiment",
        help="A/B experiment TOML (arms: share, policy, model_version): users are assigned "
        "arms by hashing and impressions logged with their arm.",
    ),
]
_Precomputed = Annotated[
    Path | None,
    typer.Option(
        "--precomputed",
        help="Parquet of `wager recommend --all-users --out`: its users are served from it "
        "(their rows are the policy's candidates) while its model version is active.",
    ),
]
_AccessLog = Annotated[
    bool,
    typer.Option(
        "--access-log/--no-access-log",
        help="One JSON line per answered request on stderr (about a tenth of a "
        "request's time; Prometheus metrics count and time requests either way).",
    ),
]
_Recalibrate = Annotated[
    bool,
    typer.Option(
        "--recalibrate",
        help="Recalibrate click models online: refit a Platt map of the model's probabilities "
        "on the logged clicks every --recalibrate-every seconds (each process, from the event "
        "database) and serve through it; /metrics shows the model's own CTR beside it.",
    ),
]
_RecalibrateDelay = Annotated[
    float | None,
    typer.Option(
        "--recalibrate-delay",
        help="Fit only on impressions served at least this many seconds ago (the time their "
        "clicks take to arrive; default 30).",
    ),
]
_RecalibratePrior = Annotated[
    float | None,
    typer.Option(
        "--recalibrate-prior",
        help="Strength of the prior on the identity map, in impressions (default 200).",
    ),
]
_RecalibrateEvery = Annotated[
    float | None, typer.Option("--recalibrate-every", help="Seconds between refits (default 2).")
]
_RecalibrateRank = Annotated[
    int,
    typer.Option(
        "--recalibrate-rank",
        help="Fit on impressions at this rank (the slot whose CTR the model predicts); 0: all.",
    ),
]

_WORKER_ENV = "WAGER_SERVE_WORKER"  # the checked settings each worker process builds from


@dataclass(frozen=True)
class ServeSetup:
    """What ``wager serve`` checked: the folder to serve, where to listen, the database
    URL and the keys (None: no authentication)."""

    path: Path
    host: str
    port: int
    db: str
    keys: ApiKeys | None


def is_loopback(host: str) -> bool:
    """True for "localhost" and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_host(host: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.match(host):
            raise _flag_error(
                "--host",
                f"--host {host!r} is not an IP address or host name; e.g. 127.0.0.1 (this "
                "machine only) or 0.0.0.0 (every interface, needs API keys)",
            ) from None


def _check_port_free(host: str, port: int) -> None:
    """Bind (host, port) once and let go, as uvicorn will (``SO_REUSEADDR``), so a port in
    use is named before any model is loaded (another process may still take it between
    this check and the server's own bind)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise _flag_error(
            "--host", f"--host {host!r} does not resolve ({exc.strerror}); use an IP address"
        ) from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise _flag_error(
                "--port",
                f"--port {port}: cannot listen on {host}:{port} ({exc.strerror}); another "
                "process may be serving there: pick another --port or stop that process",
            ) from None


def default_db(path: Path) -> str:
    """``sqlite:///`` + ``events.db`` in a registry folder, or beside a single run folder."""
    from wager.runs import RunDirectory

    folder = path.resolve()
    if RunDirectory(folder).is_run():
        folder = folder.parent
    return f"sqlite:///{folder / 'events.db'}"


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for log lines)."""
    return re.sub(r"(://[^:/@]*:)[^/]*@", r"\1***@", url)


def _load_keys(keys_file: Path | None) -> ApiKeys | None:
    from wager.serving.auth import ENV_VAR, ApiKeys

    from_env = os.environ.get(ENV_VAR, "").strip()
    if keys_file is not None and from_env:
        raise _flag_error(
            "--keys",
            f"both --keys {keys_file} and the environment variable {ENV_VAR} are set; keep "
            "one (unset the variable, or drop --keys)",
        )
    try:
        if keys_file is not None:
            if not keys_file.is_file():
                raise _flag_error("--keys", f"--keys {keys_file}: no such file")
            return ApiKeys.from_file(keys_file)
        return ApiKeys.from_env()
    except ValueError as exc:
        flag = "--keys" if keys_file is not None else None
        raise CliError(str(exc), flag=flag, path=keys_file, kind="KeysError", exit_code=2) from None


def check_serve(
    path: Path,
    host: str,
    port: int,
    db: str | None,
    keys_file: Path | None,
    insecure: bool,
    workers: int,
) -> ServeSetup:
    """Every check of ``wager serve`` that needs no model: flags, keys, the loopback rule,
    the folder and the database URL (raises :class:`CliError` naming the flag)."""
    if not 1 <= workers <= MAX_WORKERS:
        raise _flag_error(
            "--workers",
            f"--workers must be in 1..{MAX_WORKERS} server processes, got {workers} (one "
            "per CPU core is the usual choice; each process holds its own copy of the models)",
        )
    _check_host(host)
    if not 1 <= port <= 65535:
        raise _flag_error("--port", f"--port must be in 1..65535, got {port}")
    _check_port_free(host, port)
    keys = _load_keys(keys_file)
    if keys is None and not is_loopback(host) and not insecure:
        raise _flag_error(
            "--host",
            f"--host {host} is reachable from other machines and no API key is configured: "
            "set WAGER_API_KEYS or --keys FILE (see `wager serve --help`), serve on "
            "127.0.0.1, or pass --insecure to serve without keys anyway",
        )
    if not path.exists():
        raise CliError(
            f"{path}: no such run or registry folder; give a run folder written by `wager "
            "train` or a folder of them",
            path=path,
            exit_code=2,
        )
    db = db or default_db(path)
    if not db.startswith(_DB_SCHEMES):
        raise _flag_error(
            "--db",
            f"--db {redact(db)}: not a database URL wager stores events in; use "
            "sqlite:///PATH/events.db or postgresql://USER:PASSWORD@HOST/DB",
        )
    return ServeSetup(path, host, port, db, keys)


def _recalibration(
    on: bool,
    delay: float | None,
    prior: float | None,
    every: float | None,
    rank: int,
    precomputed: Path | None,
) -> dict[str, Any] | None:
    """The checked ``--recalibrate*`` settings (a JSON-ready dict of
    :class:`~wager.serving.recalibration.RecalibrationSettings`; None: its default), or
    None without ``--recalibrate``."""
    from wager.serving.recalibration import RecalibrationSettings

    if not on:
        given = {
            "--recalibrate-delay": delay,
            "--recalibrate-prior": prior,
            "--recalibrate-every": every,
            "--recalibrate-rank": None if rank == 1 else rank,
        }
        named = [flag for flag, value in given.items() if value is not None]
        if named:
            raise _flag_error(named[0], f"{named[0]} is a setting of --recalibrate; add "
                              "--recalibrate to recalibrate online, or drop it")  # fmt: skip
        return None
    if precomputed is not None:
        raise _flag_error(
            "--recalibrate",
            "--recalibrate cannot be combined with --precomputed: the table's predictions were "
            "computed offline and are served as they are; drop one of the two",
        )
    flags = {"delay_s": "--recalibrate-delay", "prior": "--recalibrate-prior",
             "every_s": "--recalibrate-every", "position": "--recalibrate-rank"}  # fmt: skip
    settings: dict[str, Any] = {"delay_s": delay, "prior": prior, "every_s": every,
                                "position": None if rank == 0 else rank}  # fmt: skip
    settings = {k: v for k, v in settings.items() if v is not None or k == "position"}
    if rank < 0:
        raise _flag_error("--recalibrate-rank", f"--recalibrate-rank must be >= 0, got {rank}")
    try:
        RecalibrationSettings(**settings)
    except ValueError as exc:
        field = next((f for f in flags if f"recalibration {f} " in str(exc)), None)
        flag = "--recalibrate" if field is None else flags[field]
        message = str(exc) if field is None else str(exc).replace(f"recalibration {field}", flag)
        raise _flag_error(flag, message) from None
    return settings


def _open_registry(path: Path) -> ModelRegistry:
    from wager.serving.registry import ModelRegistry

    try:
        return ModelRegistry(path)
    except ValueError as exc:
        from wager.runs import RunError

        if isinstance(exc, RunError):
            raise
        raise CliError(str(exc), path=path, exit_code=2) from None


class JsonLines(logging.Formatter):
    """One JSON object per log record (uvicorn's access records split into fields)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            client, method, path, http, status = args
            out.update(client=client, method=method, path=path, http=http, status=status)
        else:
            out["msg"] = record.getMessage()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def log_config() -> dict[str, Any]:
    """The ``logging.config.dictConfig`` of the service: JSON lines on stderr."""
    handler = {"handlers": ["json"], "level": "INFO", "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonLines}},
        "handlers": {
            "json": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {"uvicorn": handler, "uvicorn.access": handler, "wager": handler},
    }


def _load_experiment(path: Path | None) -> Experiment | None:
    """The experiment of ``--experiment`` (checked before anything is loaded)."""
    if path is None:
        return None
    from wager.serving.experiments import Experiment

    try:
        return Experiment.load(path)
    except ValueError as exc:
        raise CliError(f"--experiment: {exc}", flag="--experiment", exit_code=2) from None


def _cache(cache_size: int | None, redis: str | None) -> CandidateCache | None:
    """The candidate cache of ``--cache-size N`` (in-process LRU) or ``--redis URL``."""
    if cache_size is not None and redis is not None:
        raise _flag_error("--redis", "give --cache-size N (in-process) or --redis URL, not both")
    if cache_size is not None:
        if cache_size < 1:
            raise _flag_error(
                "--cache-size", f"--cache-size must be >= 1 entries, got {cache_size}"
            )
        from wager.serving.cache import LRUCache

        return LRUCache(cache_size)
    if redis is None:
        return None
    if not redis.startswith(("redis://", "rediss://", "unix://")):
        raise _flag_error(
            "--redis", f"--redis {redact(redis)}: not a Redis URL; use redis://HOST:PORT/DB"
        )
    from wager.serving.cache import RedisCache

    try:
        return RedisCache(redis)
    except ValueError as exc:
        raise _flag_error("--redis", redact(str(exc))) from None


def _load_precomputed(path: Path | None, registry: ModelRegistry) -> PrecomputedTable | None:
    """The table of ``--precomputed`` checked against the model version it claims."""
    if path is None:
        return None
    from wager.serving.precomputed import PrecomputedTable

    try:
        return PrecomputedTable.load(path, registry)
    except ValueError as exc:
        raise CliError(
            f"--precomputed: {exc}", flag="--precomputed", path=path, exit_code=2
        ) from None


@app.command("serve")
def serve(
    path: Annotated[
        Path,
        typer.Argument(
            metavar="RUN_OR_REGISTRY",
            help="A run folder (`wager train --out`) or a folder of run folders (one per "
            "version; the newest name is served first).",
        ),
    ],
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (non-loopback needs keys).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port, 1..65535.")] = 8000,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            help="Event database URL: sqlite:///PATH or postgresql://USER:PASS@HOST/DB "
            "(default: sqlite events.db in the registry folder, or beside a run folder).",
        ),
    ] = None,
    keys: Annotated[
        Path | None,
        typer.Option(
            "--keys",
            help="API key file: one KEY:SCOPE[,SCOPE] a line (scopes recommend, feedback, "
            "admin; # comments). Default: the WAGER_API_KEYS variable "
            "('key1:recommend,feedback;key2:admin').",
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option("--insecure", help="Serve without API keys on a non-loopback address."),
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            help="Server processes sharing the port: one per core serves fastest (each "
            "loads the models; activations reach every process through the event database; "
            "/metrics sums them all).",
        ),
    ] = 1,
    experiment: _Experiment = None,
    precomputed: _Precomputed = None,
    access_log: _AccessLog = True,
    cache_size: Annotated[
        int | None,
        typer.Option("--cache-size", help="In-process LRU cache of N users' candidates."),
    ] = None,
    redis: Annotated[
        str | None,
        typer.Option("--redis", help="Candidate cache on Redis: redis://HOST:PORT/DB."),
    ] = None,
    recalibrate: _Recalibrate = False,
    recalibrate_delay: _RecalibrateDelay = None,
    recalibrate_prior: _RecalibratePrior = None,
    recalibrate_every: _RecalibrateEvery = None,
    recalibrate_rank: _RecalibrateRank = 1,
) -> None:
    """Serve recommendations with confidence over HTTP, logging impressions and feedback.

    Endpoints: POST /v1/recommend, /v1/score, /v1/feedback; GET /v1/models, POST
    /v1/models/VERSION/activate; GET /healthz, /readyz, /metrics; the OpenAPI schema at
    /openapi.json. Logs are JSON lines on stderr.
    """
    from wager._optional import require

    setup = check_serve(path, host, port, db, keys, insecure, workers)
    chosen = _load_experiment(experiment)
    cache = _cache(cache_size, redis)
    recal = _recalibration(recalibrate, recalibrate_delay, recalibrate_prior, recalibrate_every,
                           recalibrate_rank, precomputed)  # fmt: skip
    require("fastapi", "serve", "wager serve")
    uvicorn = require("uvicorn", "serve", "wager serve")
    files = {"keys": keys, "experiment": experiment, "precomputed": precomputed}
    spec = {"path": str(setup.path), "db": setup.db, "cache_size": cache_size, "redis": redis,
            "recalibration": recal,
            **{k: None if v is None else str(v) for k, v in files.items()}}  # fmt: skip
    run = {"host": setup.host, "port": setup.port, "log_config": log_config(),
           "access_log": access_log}  # fmt: skip
    if workers == 1:
        service = _service_app(spec, setup.keys, chosen, cache, None)
        _announce(setup, service.state.service.registry.active, workers)
        uvicorn.run(service, **run)
        return
    _announce(setup, _store_first_version(spec, setup.keys, chosen, cache), workers)
    _serve_workers(uvicorn, spec, workers, run)


def _announce(setup: ServeSetup, active: str, workers: int) -> None:
    """The start-up line on stderr: what is served where, the events and the keys."""
    auth = f"{len(setup.keys)} API key(s)" if setup.keys is not None else "no API keys"
    processes = "" if workers == 1 else f"; {workers} worker processes"
    err_console.print(
        Text(
            f"serving {active} of {setup.path} on http://{setup.host}:{setup.port} "
            f"(events: {redact(setup.db)}; {auth}{processes})"
        ),
        soft_wrap=True,
        highlight=False,
    )
    sys.stderr.flush()


def _service_app(
    spec: dict[str, Any],
    keys: ApiKeys | None,
    experiment: Experiment | None,
    cache: CandidateCache | None,
    follow_s: float | None,
) -> Any:
    """The app of one server process from the checked settings ``spec`` (what
    :func:`serve` and each :func:`worker_app` build)."""
    registry = _open_registry(Path(spec["path"]))
    precomputed = spec["precomputed"]
    table = _load_precomputed(None if precomputed is None else Path(precomputed), registry)
    from wager.serving.app import create_app
    from wager.serving.store import EventStore

    events = EventStore(spec["db"])
    try:
        from wager.serving.recalibration import RecalibrationSettings

        recal = spec.get("recalibration")
        return create_app(
            registry, events, keys, experiment=experiment, cache=cache, precomputed=table,
            settle=True, follow_s=follow_s,
            recalibration=None if recal is None else RecalibrationSettings(**recal),
        )  # fmt: skip
    except ValueError as exc:  # an arm's model version is not in the registry
        events.close()
        raise CliError(
            f"--experiment {spec['experiment']}: {exc}", flag="--experiment", exit_code=2
        ) from None


def _store_first_version(
    spec: dict[str, Any],
    keys: ApiKeys | None,
    experiment: Experiment | None,
    cache: CandidateCache | None,
) -> str:
    """Before the workers start: build the app once (every setting checked, the first
    version loaded), store that version as the one to serve (so a version stored by an
    earlier run is not followed), and drop it all; returns the version."""
    from wager.serving.activation import ACTIVE_KEY

    service = _service_app(spec, keys, experiment, cache, None).state.service
    active: str = service.registry.active
    try:
        service.events.set_state(ACTIVE_KEY, active)
    finally:
        service.events.close()
    return active


def _serve_workers(uvicorn: Any, spec: dict[str, Any], workers: int, run: dict[str, Any]) -> None:
    """Serve with ``workers`` processes, each building its own app from ``spec``
    (:func:`worker_app`), with Prometheus' multiprocess mode in a folder made here and
    removed at the end."""
    import gc
    import shutil
    import tempfile

    gc.collect()  # the checking app's models
    metrics_dir = tempfile.mkdtemp(prefix="wager-metrics-")
    os.environ[_WORKER_ENV] = json.dumps(spec)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        uvicorn.run("wager.cli.serve:worker_app", factory=True, workers=workers, **run)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        del os.environ[_WORKER_ENV], os.environ["PROMETHEUS_MULTIPROC_DIR"]


def worker_app() -> Any:
    """The app of one ``wager serve --workers N`` process (uvicorn's factory), built from
    the settings :func:`serve` checked (environment variable ``WAGER_SERVE_WORKER``)."""
    spec = json.loads(os.environ[_WORKER_ENV])
    keys = _load_keys(None if spec["keys"] is None else Path(spec["keys"]))
    experiment = spec["experiment"]
    chosen = _load_experiment(None if experiment is None else Path(experiment))
    cache = _cache(spec["cache_size"], spec["redis"])
    return _service_app(spec, keys, chosen, cache, FOLLOW_S)
