"""Run configuration: frozen dataclasses per component, validated, loaded from / saved to TOML.

``dataclasses.replace`` is clone. Every ``__post_init__`` error names the field, the value
and the allowed range.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from wager.data.schema import Schema


def _check(cond: bool, section: str, name: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ValueError(f"[{section}] {name} = {value!r} is invalid: must be {allowed}")


@dataclass(frozen=True)
class ModelConfig:
    """The feature-aware factorisation model.

    Attributes:
        dim: embedding dimension (>= 1).
        init_std: std of the embedding initialisation (> 0).
        user_min_count: training interactions a user id needs for its own embedding (>= 1).
        item_min_count: training interactions an item id needs for its own embedding (>= 1).
    """

    dim: int = 16
    init_std: float = 0.05
    user_min_count: int = 1
    item_min_count: int = 1

    def __post_init__(self) -> None:
        _check(self.dim >= 1, "model", "dim", self.dim, "an integer >= 1")
        _check(self.init_std > 0, "model", "init_std", self.init_std, "> 0")
        _check(self.user_min_count >= 1, "model", "user_min_count", self.user_min_count, ">= 1")
        _check(self.item_min_count >= 1, "model", "item_min_count", self.item_min_count, ">= 1")


@dataclass(frozen=True)
class TrainConfig:
    """The training loop.

    Attributes:
        epochs: maximum epochs (>= 1).
        batch_size: rows per step (>= 1).
        learning_rate: optimiser step size (> 0).
        weight_decay: decoupled weight decay (AdamW) / L2 (Adam, Adagrad) (>= 0).
        optimizer: "adamw", "adam" or "adagrad".
        patience: epochs without validation improvement before stopping (>= 1); the best
            epoch's parameters are restored.
        grad_clip: max gradient norm, or None.
        device: "cpu", "cuda" or "auto" (cuda when available) — an explicit choice.
    """

    epochs: int = 20
    batch_size: int = 2048
    learning_rate: float = 0.01
    weight_decay: float = 0.0
    optimizer: Literal["adamw", "adam", "adagrad"] = "adam"
    patience: int = 2
    grad_clip: float | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "training", "epochs", self.epochs, "an integer >= 1")
        _check(self.batch_size >= 1, "training", "batch_size", self.batch_size, ">= 1")
        _check(
            self.learning_rate > 0 and math.isfinite(self.learning_rate),
            "training",
            "learning_rate",
            self.learning_rate,
            "a finite number > 0",
        )
        _check(self.weight_decay >= 0, "training", "weight_decay", self.weight_decay, ">= 0")
        _check(
            self.optimizer in ("adamw", "adam", "adagrad"),
            "training",
            "optimizer",
            self.optimizer,
            "one of 'adamw', 'adam', 'adagrad'",
        )
        _check(self.patience >= 1, "training", "patience", self.patience, ">= 1")
        _check(
            self.grad_clip is None or self.grad_clip > 0,
            "training",
            "grad_clip",
            self.grad_clip,
            "> 0 or unset",
        )
        _check(
            self.device in ("cpu", "cuda", "auto"),
            "training",
            "device",
            self.device,
            "one of 'cpu', 'cuda', 'auto'",
        )


@dataclass(frozen=True)
class EnsembleConfig:
    """Deep ensemble: members trained with different seeds (and bootstrap resampling).

    Attributes:
        members: number of members (>= 2).
        bootstrap: each member sees a bootstrap resample (Poisson(1) row weights).
    """

    members: int = 5
    bootstrap: bool = True

    def __post_init__(self) -> None:
        _check(self.members >= 2, "ensemble", "members", self.members, "an integer >= 2")


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs: data schema, model, training, uncertainty, seed."""

    schema: Schema = field(default_factory=Schema)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    seed: int | None = 0

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (None values omitted: TOML has no null)."""
        out: dict[str, Any] = {"schema": self.schema.to_dict()}
        for name in ("model", "training", "ensemble"):
            out[name] = {k: v for k, v in asdict(getattr(self, name)).items() if v is not None}
        if self.seed is not None:
            out["seed"] = self.seed
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict`; unknown keys are errors naming the section."""
        known = {"schema", "model", "training", "ensemble", "seed"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config sections {sorted(unknown)}; allowed: {sorted(known)}")
        kwargs: dict[str, Any] = {"seed": data.get("seed")}
        if "schema" in data:
            kwargs["schema"] = Schema.from_dict(data["schema"])
        for name, klass in (
            ("model", ModelConfig),
            ("training", TrainConfig),
            ("ensemble", EnsembleConfig),
        ):
            section = dict(data.get(name, {}))
            allowed = {f.name for f in fields(klass)}
            bad = set(section) - allowed
            if bad:
                raise ValueError(
                    f"[{name}] has unknown keys {sorted(bad)}; allowed: {sorted(allowed)}"
                )
            kwargs[name] = klass(**section)
        return cls(**kwargs)

    def save(self, path: str | Path) -> None:
        """Write TOML."""
        Path(path).write_text(dumps_toml(self.to_dict()), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """Read TOML written by :meth:`save` (or by hand)."""
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{p}: config file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{p}: invalid TOML: {exc}") from None
        return cls.from_dict(data)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dumps_toml(data: dict[str, Any], prefix: str = "") -> str:
    """Serialise nested dicts of scalars, lists and lists of tables as TOML."""
    lines: list[str] = []
    tables: list[tuple[str, Any]] = []
    for k, v in data.items():
        if isinstance(v, dict) or (
            isinstance(v, list) and v and all(isinstance(x, dict) for x in v)
        ):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {_toml_value(v)}")
    for k, v in tables:
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            lines.append(f"\n[{name}]")
            lines.append(dumps_toml(v, prefix=f"{name}.").strip("\n"))
        else:
            for item in v:
                lines.append(f"\n[[{name}]]")
                lines.append(dumps_toml(item, prefix=f"{name}.").strip("\n"))
    return "\n".join(x for x in lines if x != "") + "\n"
