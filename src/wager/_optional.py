"""The one helper for optional dependencies: import lazily, fail with the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from wager.errors import MissingExtraError


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming the extra that provides it.

    Args:
        module: importable module name, e.g. "faiss".
        extra: the wager extra that installs it, e.g. "ann".
        feature: what the user tried to use, for the message, e.g. "FaissIndex".
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingExtraError(
            f"{feature} needs the optional package '{module}', which is not installed. "
            f'Install it with: pip install "wager[{extra}]"'
        ) from exc
