"""Recommender: the facade used by the CLI, serving and notebooks.

``Recommender(config).fit(train, valid)`` fits the encoders on the training split, trains
an ensemble of feature-aware factorisation models with a Bernoulli head, and then
``predict(user_ids, item_ids) -> Prediction`` and ``recommend(user_ids, k) -> DataFrame``.
``save(dir)`` writes a run directory (config TOML, safetensors weights, encoders JSON,
feature tables Parquet, metrics JSON) that ``Recommender.load(dir)`` reads back with
nothing else needed.

Example:
    >>> import pandas as pd
    >>> from wager.config import RunConfig, TrainConfig, EnsembleConfig
    >>> from wager.data.schema import Schema
    >>> df = pd.DataFrame({"user_id": [1, 1, 2, 2], "item_id": [1, 2, 1, 2],
    ...                    "click": [1, 0, 0, 1]})
    >>> cfg = RunConfig(schema=Schema(label="click"), training=TrainConfig(epochs=2),
    ...                 ensemble=EnsembleConfig(members=2))
    >>> rec = Recommender(cfg).fit(df)
    >>> rec.predict([1], [2]).mean.shape
    torch.Size([1])
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from wager.config import RunConfig
from wager.data.features import InteractionEncoder, categorical_keys
from wager.errors import NotFittedError, data_error
from wager.models.fields import Field
from wager.models.heads import BernoulliHead
from wager.models.mf import FeatureFactorization
from wager.prediction import Prediction
from wager.uncertainty.ensemble import Ensemble

RUN_FILES = {
    "config": "config.toml",
    "weights": "weights.safetensors",
    "encoders": "encoders.json",
    "user_features": "user_features.parquet",
    "item_features": "item_features.parquet",
    "catalogue": "catalogue.json",
    "metrics": "metrics.json",
}


def to_tensors(arrays: Mapping[str, np.ndarray]) -> dict[str, Tensor]:
    """numpy arrays -> torch tensors (int64 stays int64, floats become float32)."""
    out = {}
    for k, v in arrays.items():
        t = torch.from_numpy(np.require(v, requirements=["C", "W"]))
        out[k] = t.float() if t.is_floating_point() else t
    return out


class Recommender:
    """Fit / predict / recommend / save / load for a click (Bernoulli) model with an ensemble.

    Learned state ends in ``_``; calling ``predict``/``recommend``/``save`` before ``fit``
    raises :class:`~wager.errors.NotFittedError`.
    """

    def __init__(self, config: RunConfig | None = None) -> None:
        self.config = config or RunConfig()
        self.head = BernoulliHead()
        self.encoder_: InteractionEncoder | None = None
        self.ensemble_: Ensemble | None = None
        self.items_: np.ndarray | None = None
        self.seen_: dict[str, set[str]] | None = None
        self.user_features_: pd.DataFrame | None = None
        self.item_features_: pd.DataFrame | None = None
        self.metrics_: dict[str, Any] = {}

    # ------------------------------------------------------------------ fitting
    def _factory(self) -> FeatureFactorization:
        assert self.encoder_ is not None
        fields = [Field(k, kind, size) for k, kind, size in self.encoder_.fields()]  # type: ignore[arg-type]
        cfg = self.config.model
        return FeatureFactorization(
            [f for f in fields if f.key.startswith("user.")],
            [f for f in fields if f.key.startswith("item.")],
            [f for f in fields if f.key.startswith("context.")],
            dim=cfg.dim,
            init_std=cfg.init_std,
        )

    def _check_columns(self, df: pd.DataFrame, what: str, need_label: bool) -> None:
        s = self.config.schema
        need = [s.user, s.item] + [f.name for f in s.context]
        if need_label and s.label is not None:
            need.append(s.label)
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise data_error(
                "missing_column",
                f"columns {missing} are missing from the {what} table",
                source=what,
                column=missing[0],
                fix=f"Available columns: {', '.join(map(str, df.columns))}.",
            )

    def fit(
        self,
        train: pd.DataFrame,
        valid: pd.DataFrame | None = None,
        *,
        user_features: pd.DataFrame | None = None,
        item_features: pd.DataFrame | None = None,
        show_progress: bool = False,
    ) -> Recommender:
        """Fit encoders (training split only) and train the ensemble; returns self.

        Args:
            train: interaction rows with the schema's user, item, label and context columns.
            valid: rows for early stopping (validation log-loss), or None.
            user_features: user feature table keyed by ``schema.user``, or None.
            item_features: item feature table keyed by ``schema.item``, or None.
            show_progress: draw a progress bar.
        """
        s = self.config.schema
        if s.label is None:
            raise ValueError("Schema.label is None: a click model needs a label column")
        self._check_columns(train, "train", need_label=True)
        if valid is not None:
            self._check_columns(valid, "valid", need_label=True)
        if len(train) == 0:
            raise data_error(
                "empty_data",
                "the training split has no rows",
                source="train",
                fix="Check the split and any filters applied before fit().",
            )
        mc = self.config.model
        self.encoder_ = InteractionEncoder.from_schema(s, mc.user_min_count, mc.item_min_count)
        self.encoder_.fit(train, user_features, item_features)
        self.user_features_ = user_features
        self.item_features_ = item_features
        train_t = to_tensors(self.encoder_.transform(train))
        valid_t = to_tensors(self.encoder_.transform(valid)) if valid is not None else None
        head = self.head

        def loss(out: Tensor, batch: dict[str, Tensor], w: Tensor) -> Tensor:
            return head.loss(out, batch["label"], w)

        def valid_metric(out: Tensor, batch: dict[str, Tensor]) -> Tensor:
            y = batch["label"].expand_as(out)
            return torch.nn.functional.binary_cross_entropy_with_logits(
                out, y, reduction="none"
            ).mean(dim=1)

        self.ensemble_ = Ensemble(self.config.ensemble, seed=self.config.seed).fit(
            self._factory,
            loss,
            train_t,
            self.config.training,
            valid=valid_t,
            valid_metric=valid_metric,
            show_progress=show_progress,
        )
        items = categorical_keys(train[s.item]).dropna()
        if item_features is not None and s.item in item_features.columns:
            items = pd.concat([items, categorical_keys(item_features[s.item]).dropna()])
        self.items_ = pd.unique(items.to_numpy())
        users = categorical_keys(train[s.user]).to_numpy()
        its = categorical_keys(train[s.item]).to_numpy()
        seen: dict[str, set[str]] = {}
        for u, i in zip(users, its, strict=True):
            seen.setdefault(u, set()).add(i)
        self.seen_ = seen
        hist = self.ensemble_.history_
        self.metrics_ = {"train_seconds": hist.seconds if hist else float("nan")}
        return self

    def _require_fit(self) -> tuple[InteractionEncoder, Ensemble]:
        if self.encoder_ is None or self.ensemble_ is None:
            raise NotFittedError("this Recommender is not fitted: call fit() (or load()) first")
        return self.encoder_, self.ensemble_

    # ------------------------------------------------------------------ inference
    def _rows(
        self,
        user_ids: Sequence[Any] | np.ndarray,
        item_ids: Sequence[Any] | np.ndarray,
        context: pd.DataFrame | Mapping[str, Any] | None,
    ) -> pd.DataFrame:
        s = self.config.schema
        rows = pd.DataFrame({s.user: list(user_ids), s.item: list(item_ids)})
        for f in s.context:
            if isinstance(context, pd.DataFrame):
                rows[f.name] = context[f.name].to_numpy()
            elif context is not None and f.name in context:
                rows[f.name] = context[f.name]
            else:
                rows[f.name] = None  # missing context: OOV / missing indicator
        return rows

    def predict(
        self,
        user_ids: Sequence[Any] | np.ndarray,
        item_ids: Sequence[Any] | np.ndarray,
        context: pd.DataFrame | Mapping[str, Any] | None = None,
        batch_size: int = 65536,
    ) -> Prediction:
        """Predicted click probability with uncertainty for (user, item) pairs.

        Args:
            user_ids: (n,) user ids (unknown ids go through the OOV path).
            item_ids: (n,) item ids, paired with ``user_ids``.
            context: context values: a DataFrame with n rows, a mapping of column -> scalar
                applied to every pair (e.g. {"position": 1}), or None (missing context).
            batch_size: pairs per forward pass.

        Returns:
            Prediction with mean (n,) CTR, std = epistemic std (n,) (the members' spread:
            uncertainty about the CTR itself), samples (M, n), support (0, 1).
        """
        encoder, ensemble = self._require_fit()
        if len(user_ids) != len(item_ids):
            raise ValueError(
                f"user_ids and item_ids must pair up: got {len(user_ids)} and {len(item_ids)}"
            )
        rows = self._rows(user_ids, item_ids, context)
        parts = []
        for start in range(0, max(len(rows), 1), batch_size):
            chunk = rows.iloc[start : start + batch_size]
            batch = to_tensors(encoder.transform(chunk))
            parts.append(ensemble.predict(batch, self.head.mean, support=self.head.support))
        if len(parts) == 1:
            return parts[0]
        samples = torch.cat([p.samples for p in parts if p.samples is not None], dim=1)
        return Prediction.from_members(samples, method=ensemble.method, support=self.head.support)

    def recommend(
        self,
        user_ids: Sequence[Any] | np.ndarray,
        k: int = 10,
        *,
        items: Sequence[Any] | np.ndarray | None = None,
        exclude_seen: bool = True,
        context: Mapping[str, Any] | None = None,
        confidence_level: float = 0.9,
    ) -> pd.DataFrame:
        """Top-k items per user, ranked by predicted mean, with std and interval.

        Args:
            user_ids: users to recommend for (unknown users get cold-start recommendations).
            k: list length per user (>= 1).
            items: candidate items (default: every item known at fit time).
            exclude_seen: drop items the user interacted with in training.
            context: context applied to every candidate (e.g. {"position": 1}).
            confidence_level: level of the [low, high] interval.

        Returns:
            DataFrame with columns user, item, rank (1-based), score (the ranking score,
            here the mean), mean, std, low, high, one row per recommended item.
        """
        self._require_fit()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        assert self.items_ is not None and self.seen_ is not None
        cand = np.asarray(categorical_keys(items if items is not None else self.items_).to_numpy())
        frames = []
        for user in user_ids:
            ukey = categorical_keys([user]).iloc[0]
            pool = cand
            if exclude_seen and ukey in self.seen_:
                pool = cand[~np.isin(cand, list(self.seen_[ukey]))]
            if pool.size == 0:
                continue
            pred = self.predict([user] * pool.size, pool, context)
            top = torch.topk(pred.mean, min(k, pool.size)).indices
            sel = pred[top]
            iv = sel.interval(confidence_level)
            frames.append(
                pd.DataFrame(
                    {
                        "user": user,
                        "item": pool[top.numpy()],
                        "rank": np.arange(1, top.numel() + 1),
                        "score": sel.mean.numpy(),
                        "mean": sel.mean.numpy(),
                        "std": sel.std.numpy() if sel.std is not None else np.nan,
                        "low": iv.low.numpy(),
                        "high": iv.high.numpy(),
                    }
                )
            )
        cols = ["user", "item", "rank", "score", "mean", "std", "low", "high"]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        """Write the run directory; returns its path."""
        encoder, ensemble = self._require_fit()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.config.save(d / RUN_FILES["config"])
        save_file(
            {k: v.contiguous() for k, v in ensemble.state_dict().items()},
            str(d / RUN_FILES["weights"]),
        )
        (d / RUN_FILES["encoders"]).write_text(json.dumps(encoder.state_dict(), indent=1))
        for name, table in (
            ("user_features", encoder.users.table_),
            ("item_features", encoder.items.table_),
        ):
            path = d / RUN_FILES[name]
            if table is not None:
                out = table.copy()
                out.index = out.index.astype(str)
                out.to_parquet(path)
            elif path.exists():
                path.unlink()
        assert self.items_ is not None and self.seen_ is not None
        (d / RUN_FILES["catalogue"]).write_text(
            json.dumps(
                {
                    "items": [str(i) for i in self.items_],
                    "seen": {u: sorted(v) for u, v in self.seen_.items()},
                }
            )
        )
        self.save_metrics(d)
        return d

    def save_metrics(self, directory: str | Path) -> Path:
        """Write ``metrics_`` as metrics.json into the run directory."""
        path = Path(directory) / RUN_FILES["metrics"]
        path.write_text(json.dumps(self.metrics_, indent=2, default=float))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Recommender:
        """Read a run directory written by :meth:`save`."""
        d = Path(directory)
        for key in ("config", "weights", "encoders", "catalogue"):
            if not (d / RUN_FILES[key]).exists():
                raise FileNotFoundError(
                    f"{d / RUN_FILES[key]}: missing from the run directory; is '{d}' a directory "
                    "written by Recommender.save() / wager quickstart?"
                )
        rec = cls(RunConfig.load(d / RUN_FILES["config"]))
        tables = {}
        for name in ("user_features", "item_features"):
            p = d / RUN_FILES[name]
            tables[name] = pd.read_parquet(p) if p.exists() else None
        rec.encoder_ = InteractionEncoder.from_state_dict(
            json.loads((d / RUN_FILES["encoders"]).read_text()),
            tables["user_features"],
            tables["item_features"],
        )
        rec.ensemble_ = Ensemble(rec.config.ensemble, seed=rec.config.seed).load_state_dict(
            rec._factory, load_file(str(d / RUN_FILES["weights"]))
        )
        cat = json.loads((d / RUN_FILES["catalogue"]).read_text())
        rec.items_ = np.asarray(cat["items"], dtype=object)
        rec.seen_ = {u: set(v) for u, v in cat["seen"].items()}
        mp = d / RUN_FILES["metrics"]
        rec.metrics_ = json.loads(mp.read_text()) if mp.exists() else {}
        return rec
