"""Dataset: what every loader returns — plain DataFrames, a suggested Schema, and a report."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from wager.data.schema import Schema
from wager.errors import ValidationReport


@dataclass
class Dataset:
    """An interaction table with its schema and optional feature tables.

    Attributes:
        interactions: one row per interaction (or per aggregated (target, context) row),
            with the columns ``schema`` names.
        schema: column roles and feature specs (a suggestion from the loader; edit freely).
        user_features: one row per user, keyed by the ``schema.user`` column, or None.
        item_features: one row per item, keyed by the ``schema.item`` column, or None.
        source: where the data came from (a path or a generator's name), used in messages.
        report: findings from loading: warnings, and every dropped-row count.
        folds: predefined (train, test) folds shipped with the data, by name
            (e.g. MovieLens "u1".."u5", "ua", "ub"); empty when there are none.
    """

    interactions: pd.DataFrame
    schema: Schema
    user_features: pd.DataFrame | None = None
    item_features: pd.DataFrame | None = None
    source: str = ""
    report: ValidationReport = field(default_factory=ValidationReport)
    folds: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = field(default_factory=dict)
