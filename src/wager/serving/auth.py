"""API keys with scopes: who may call which endpoint of the service.

Keys come from the environment variable :data:`ENV_VAR`
(``WAGER_API_KEYS="key1:recommend,feedback;key2:admin"``) or from a file with one
``key:scope,scope`` per line (blank lines and ``#`` comments skipped). The scopes are
``recommend`` (``/v1/recommend``, ``/v1/score``), ``feedback`` (``/v1/feedback``) and ``admin``
(the model registry; it implies the other two). Only the SHA-256 digest of each key is kept,
and a presented key is compared with every stored digest in constant time
(:func:`hmac.compare_digest`), so neither the keys nor the timing of a comparison leak.

This module needs no optional package: the app maps :class:`AuthError` to its status.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from wager.errors import WagerError

#: the environment variable the keys are read from
ENV_VAR = "WAGER_API_KEYS"
#: every scope a key can hold; "admin" implies the others
SCOPES = ("recommend", "feedback", "admin")
_EXAMPLE = "key1:recommend,feedback"


class AuthError(WagerError):
    """A request the keys refuse: ``status`` 401 (no key, or an unknown one) or 403 (a known
    key without the scope the endpoint needs).

    Args:
        message: what is wrong and what to send instead (never the key itself).
        status: the HTTP status the app answers with.
    """

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class ApiKeys:
    """The accepted keys (as SHA-256 digests) and the scopes of each.

    Build it with :meth:`from_env`, :meth:`from_file` or :meth:`parse`; the constructor
    takes already-checked {key: scopes}.

    Args:
        keys: {plain key: its scopes}; each key non-empty, each scope one of :data:`SCOPES`.
    """

    def __init__(self, keys: Mapping[str, Iterable[str]]) -> None:
        self._entries: list[tuple[bytes, frozenset[str]]] = []
        for key, scopes in keys.items():
            held = frozenset(scopes)
            bad = sorted(held - set(SCOPES))
            if not key or bad:
                raise ValueError(
                    f"ApiKeys: {'an empty key' if not key else 'unknown scope ' + repr(bad[0])}; "
                    f"keys are non-empty, scopes one of {', '.join(SCOPES)}"
                )
            self._entries.append((_digest(key), held))

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def parse(cls, entries: Iterable[tuple[str, str]]) -> ApiKeys:
        """Keys from ``(where, "key:scope,scope")`` pairs; ``where`` names the entry in errors
        (e.g. "WAGER_API_KEYS entry 2" or "keys.txt:3").

        Raises:
            ValueError: an entry without ":", an empty key, no scope, an unknown scope or a
                key given twice, naming ``where`` and the fix.
        """
        keys: dict[str, list[str]] = {}
        first_seen: dict[str, str] = {}
        for where, entry in entries:
            key, sep, scopes_text = entry.strip().partition(":")
            key = key.strip()
            if not sep:
                raise ValueError(
                    f"{where}: an API key entry is KEY:SCOPE[,SCOPE...] (e.g. {_EXAMPLE!r}); "
                    "this one has no ':'"
                )
            if not key:
                raise ValueError(f"{where}: the key before ':' is empty; write KEY:SCOPES")
            scopes = [s.strip() for s in scopes_text.split(",") if s.strip()]
            if not scopes:
                raise ValueError(
                    f"{where}: the key has no scope; add one or more of {', '.join(SCOPES)} "
                    "after ':'"
                )
            for scope in scopes:
                if scope not in SCOPES:
                    raise ValueError(
                        f"{where}: unknown scope {scope!r}; use one of {', '.join(SCOPES)}"
                    )
            if key in keys:
                raise ValueError(
                    f"{where}: this key is already given at {first_seen[key]}; give each key "
                    "once, with all its scopes (KEY:recommend,feedback)"
                )
            keys[key] = scopes
            first_seen[key] = where
        return cls(keys)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ApiKeys | None:
        """The keys of :data:`ENV_VAR` (entries separated by ";"), or None when it is unset
        or blank. ``environ`` defaults to ``os.environ``.

        Raises:
            ValueError: a bad entry, named as "WAGER_API_KEYS entry N".
        """
        text = (os.environ if environ is None else environ).get(ENV_VAR, "")
        if not text.strip():
            return None
        parts = text.split(";")
        entries = [(f"{ENV_VAR} entry {i}", p) for i, p in enumerate(parts, 1) if p.strip()]
        return cls.parse(entries)

    @classmethod
    def from_file(cls, path: str | Path) -> ApiKeys:
        """The keys of a file: one ``key:scope,scope`` per line; blank lines and lines
        starting with ``#`` are skipped.

        Raises:
            ValueError: an unreadable file, a file without any key, or a bad line, named as
                "FILE:LINE".
        """
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(
                f"{path}: cannot read the API key file ({exc}); give a UTF-8 text file with "
                f"one KEY:SCOPES per line (e.g. {_EXAMPLE})"
            ) from exc
        entries = [
            (f"{path}:{n}", line)
            for n, line in enumerate(lines, 1)
            if line.strip() and not line.lstrip().startswith("#")
        ]
        if not entries:
            raise ValueError(
                f"{path}: no API key in the file; add one KEY:SCOPES per line (e.g. {_EXAMPLE})"
            )
        return cls.parse(entries)

    def scopes_of(self, key: str | None) -> frozenset[str] | None:
        """The scopes of ``key`` ("admin" expanded to every scope), or None for no / an
        unknown key. Every stored digest is compared, in constant time."""
        if not key:
            return None
        digest = _digest(key)
        found: frozenset[str] | None = None
        for stored, scopes in self._entries:
            if hmac.compare_digest(stored, digest):
                found = scopes
        if found is None:
            return None
        return frozenset(SCOPES) if "admin" in found else found

    def check(self, key: str | None, scope: str) -> None:
        """Let the request through when ``key`` holds ``scope``.

        Args:
            key: the ``x-api-key`` header's value, or None when absent.
            scope: the scope the endpoint needs, one of :data:`SCOPES`.

        Raises:
            AuthError: status 401 for no key or an unknown one, 403 for a key without
                ``scope``.
        """
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}; use one of {', '.join(SCOPES)}")
        held = self.scopes_of(key)
        if held is None:
            what = "no API key was sent" if not key else "the API key is not known"
            raise AuthError(
                f"{what}: send a key with the {scope!r} scope in the x-api-key header", 401
            )
        if scope not in held:
            raise AuthError(
                f"the API key lacks the {scope!r} scope (it holds {', '.join(sorted(held))}); "
                f"use a key with {scope!r} or 'admin'",
                403,
            )
