"""Negative sampling for implicit feedback: items a user did not interact with.

A sampler is a strategy object with one method, :meth:`NegativeSampler.sample`.
Given a table of positive (user, item) rows it returns ``n_per_positive`` negative
(user, item) pairs for every positive row, never a pair that is a positive of that
user anywhere in the table. The same user may get the same negative item more than
once (draws are independent, with replacement).

Sampling is vectorised rejection sampling in NumPy: every draw is made from the
proposal distribution over the whole catalogue, pairs that are positives are found
with a sorted search on the pair key ``user_code * n_items + item_code`` and only
those are redrawn. Users whose positives hold more than 90% of the proposal's
mass, and the rare rows still rejected after 64 rounds, are drawn exactly from
their own allowed items instead, so the work is bounded; every output row follows
the proposal restricted to the user's non-positives.

Example:
    >>> import numpy as np, pandas as pd
    >>> from wager.data.schema import Schema
    >>> pos = pd.DataFrame({"user_id": ["a", "a", "b"], "item_id": [1, 2, 3]})
    >>> neg = UniformNegatives().sample(pos, Schema(), 2, np.random.default_rng(0))
    >>> neg.shape
    (6, 2)
    >>> sorted(set(neg.loc[neg.user_id == "a", "item_id"]))
    [3]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from wager.data.schema import Schema
from wager.errors import data_error, suggest

# Users whose positives hold more than this share of the proposal are drawn exactly
# (rejection would need 1 / (1 - share) rounds on average); rows still rejected
# after _REJECTION_ROUNDS rounds are drawn exactly too.
_MAX_REJECTED_MASS = 0.9
_REJECTION_ROUNDS = 64
_MAX_IDS_SHOWN = 5


class NegativeSampler(Protocol):
    """What every negative-sampling strategy provides."""

    def sample(
        self,
        positives: pd.DataFrame,
        schema: Schema,
        n_per_positive: int,
        generator: np.random.Generator,
        items: np.ndarray | None = None,
    ) -> pd.DataFrame:
        """Draw negatives; see :meth:`UniformNegatives.sample` for the contract."""
        ...


@dataclass(frozen=True)
class UniformNegatives:
    """Each negative item is uniform over the catalogue minus the user's positives.

    Example:
        >>> import numpy as np, pandas as pd
        >>> from wager.data.schema import Schema
        >>> pos = pd.DataFrame({"user_id": [1, 1, 2], "item_id": [10, 11, 12]})
        >>> UniformNegatives().sample(pos, Schema(), 1, np.random.default_rng(0)).shape
        (3, 2)
    """

    def sample(
        self,
        positives: pd.DataFrame,
        schema: Schema,
        n_per_positive: int,
        generator: np.random.Generator,
        items: np.ndarray | None = None,
    ) -> pd.DataFrame:
        """Draw ``n_per_positive`` negatives per positive row.

        Every row of ``positives`` counts as a positive, whatever its label.

        Args:
            positives: (n_rows, ...) table with the ``schema.user`` and ``schema.item``
                columns; a user's positives are all of that user's rows.
            schema: names the user and item columns.
            n_per_positive: negatives per positive row (>= 1).
            generator: source of randomness; the same seed gives the same negatives.
            items: the catalogue to draw from, (n_items,) ids; default: the distinct
                items of ``positives``. Positives on items outside it are ignored.

        Returns:
            (n_rows * n_per_positive, 2) DataFrame with columns ``[schema.user,
            schema.item]``; rows ``i * n_per_positive`` to ``(i + 1) * n_per_positive - 1``
            belong to positive row ``i``. Index 0..n-1.

        Raises:
            DataError: a missing column or id, an empty catalogue, or a user whose
                positives cover the whole catalogue (no negative exists for them).
        """
        return _sample_negatives(positives, schema, n_per_positive, generator, items, None)


@dataclass(frozen=True)
class PopularityNegatives:
    """Negatives drawn with probability proportional to ``count(item) ** alpha``.

    ``count(item)`` is the number of rows of ``positives`` on the item. The draw is
    restricted to the catalogue minus the user's positives and renormalised there.
    An item of the catalogue that never occurs in ``positives`` (possible when
    ``items`` is given) is weighted as if it occurred once, so it can still be drawn.
    ``alpha=0`` is the uniform distribution; ``alpha=0.75`` is word2vec's choice;
    a negative ``alpha`` favours rare items.

    Attributes:
        alpha: exponent of the item count (a finite real number).

    Example:
        >>> import numpy as np, pandas as pd
        >>> from wager.data.schema import Schema
        >>> pos = pd.DataFrame({"user_id": [1, 2, 3], "item_id": [10, 10, 11]})
        >>> neg = PopularityNegatives(alpha=1.0).sample(pos, Schema(), 1,
        ...                                             np.random.default_rng(0))
        >>> neg.item_id.tolist()
        [11, 11, 10]
    """

    alpha: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float):
            raise ValueError(f"PopularityNegatives.alpha must be a number, got {self.alpha!r}")
        if not math.isfinite(self.alpha):
            raise ValueError(f"PopularityNegatives.alpha must be finite, got {self.alpha!r}")

    def sample(
        self,
        positives: pd.DataFrame,
        schema: Schema,
        n_per_positive: int,
        generator: np.random.Generator,
        items: np.ndarray | None = None,
    ) -> pd.DataFrame:
        """Draw ``n_per_positive`` negatives per positive row.

        Same arguments, result and errors as :meth:`UniformNegatives.sample`.
        """
        return _sample_negatives(
            positives, schema, n_per_positive, generator, items, float(self.alpha)
        )


# ----------------------------------------------------------------------------- internals


def _format_ids(ids: list[Any], total: int) -> str:
    shown = ", ".join(repr(v) if isinstance(v, str) else str(v) for v in ids[:_MAX_IDS_SHOWN])
    if total > _MAX_IDS_SHOWN:
        shown += f" (and {total - _MAX_IDS_SHOWN} more)"
    return shown


def _check_inputs(
    positives: pd.DataFrame, schema: Schema, n_per_positive: int, generator: np.random.Generator
) -> None:
    if (
        isinstance(n_per_positive, bool)
        or not isinstance(n_per_positive, int | np.integer)
        or n_per_positive < 1
    ):
        raise ValueError(f"n_per_positive must be an integer >= 1, got {n_per_positive!r}")
    if not isinstance(generator, np.random.Generator):
        raise TypeError(
            f"generator must be a numpy.random.Generator, e.g. np.random.default_rng(0), "
            f"got {type(generator).__name__}"
        )
    for col in (schema.user, schema.item):
        if col not in positives.columns:
            raise data_error(
                "missing_column",
                "the positives table has no such column",
                source="positives",
                column=col,
                fix=(
                    "Name the right column in the schema."
                    f"{suggest(col, map(str, positives.columns))}"
                    f" Columns present: {', '.join(map(str, positives.columns))}."
                ),
            )
        bad = np.flatnonzero(positives[col].isna().to_numpy())
        if len(bad):
            raise data_error(
                "missing_id",
                f"{len(bad)} positives have no id",
                source="positives",
                column=col,
                rows=bad,
                fix="Remove or fill those rows before sampling negatives.",
            )


def _log_weights(item_codes: np.ndarray, n_items: int, alpha: float | None) -> np.ndarray | None:
    """Log proposal weights over the catalogue, (n_items,) float64; None for uniform."""
    if alpha is None:
        return None
    counts = np.bincount(item_codes[item_codes >= 0], minlength=n_items).astype(np.float64)
    return alpha * np.log(np.maximum(counts, 1.0))


def _sample_negatives(
    positives: pd.DataFrame,
    schema: Schema,
    n_per_positive: int,
    generator: np.random.Generator,
    items: np.ndarray | None,
    alpha: float | None,
) -> pd.DataFrame:
    """The shared body of the samplers: ``alpha`` None is uniform, else popularity ** alpha."""
    _check_inputs(positives, schema, n_per_positive, generator)
    catalogue = _catalogue(positives, schema, items)
    n_items = len(catalogue)
    user_codes, user_values = pd.factorize(positives[schema.user])
    n_users = len(user_values)
    if len(positives) == 0:
        return pd.DataFrame(
            {
                schema.user: positives[schema.user].iloc[:0].to_numpy(),
                schema.item: catalogue[:0],
            }
        )
    if n_items == 0:
        raise data_error(
            "empty_catalogue",
            "the item catalogue is empty, so there is nothing to sample",
            source="items",
            fix="Pass the catalogue of items as items=...",
        )
    item_codes = catalogue.get_indexer(pd.Index(positives[schema.item]))
    user_codes = user_codes.astype(np.int64)
    keep = item_codes >= 0
    pos_keys = np.unique(user_codes[keep] * n_items + item_codes[keep])
    n_pos_per_user = np.bincount(pos_keys // n_items, minlength=n_users)
    _check_negative_exists(n_pos_per_user, n_items, user_values, schema.user)
    log_w = _log_weights(item_codes, n_items, alpha)
    rows_user = np.repeat(user_codes, n_per_positive)
    out = _draw_negatives(rows_user, pos_keys, n_pos_per_user, n_items, log_w, generator)
    return pd.DataFrame(
        {
            schema.user: user_values.take(rows_user),
            schema.item: catalogue.take(out),
        }
    )


def _catalogue(positives: pd.DataFrame, schema: Schema, items: np.ndarray | None) -> pd.Index:
    """The distinct catalogue items: ``items`` if given, else the items of the positives.

    Raises:
        DataError: ``items`` holds a missing id.
    """
    if items is None:
        return pd.Index(positives[schema.item].unique())
    catalogue = pd.Index(items).unique()
    bad = np.flatnonzero(catalogue.isna())
    if len(bad):
        raise data_error(
            "missing_id",
            "the item catalogue holds a missing id",
            source="items",
            fix="Remove missing values from items.",
        )
    return catalogue


def _check_negative_exists(
    n_pos_per_user: np.ndarray, n_items: int, user_values: pd.Index, user_col: str
) -> None:
    """Refuse users with positives on every catalogue item (no negative exists for them).

    Args:
        n_pos_per_user: (n_users,) int, distinct catalogue items each user has positives on.
        n_items: catalogue size.
        user_values: the user ids, indexed by user code.
        user_col: the user column, named in the error.
    """
    full = np.flatnonzero(n_pos_per_user >= n_items)
    if len(full):
        names = [user_values[int(u)] for u in full[:_MAX_IDS_SHOWN]]
        raise data_error(
            "no_negative_possible",
            f"user {_format_ids(names, len(full))} has positives on every one of the "
            f"{n_items} items of the catalogue, so no negative item exists",
            source="positives",
            column=user_col,
            count=len(full),
            fix="Pass a larger catalogue as items=..., or leave these users out of "
            "negative sampling.",
        )


def _draw_negatives(
    rows_user: np.ndarray,
    pos_keys: np.ndarray,
    n_pos_per_user: np.ndarray,
    n_items: int,
    log_w: np.ndarray | None,
    generator: np.random.Generator,
) -> np.ndarray:
    """Draw one negative item code per output row: rejection sampling, exact for dense users.

    Args:
        rows_user: (n_rows,) int64 user code of each output row.
        pos_keys: sorted distinct ``user_code * n_items + item_code`` of the positives.
        n_pos_per_user: (n_users,) distinct positive items per user.
        n_items: catalogue size.
        log_w: (n_items,) log proposal weights, or None for uniform.
        generator: the source of randomness; the draws happen in a fixed order.

    Returns:
        (n_rows,) int64 item codes, none of them a positive of the row's user.
    """
    cdf = None
    if log_w is not None:
        cdf = np.cumsum(np.exp(log_w - log_w.max()))

    def draw(size: int) -> np.ndarray:
        if cdf is None:
            return generator.integers(0, n_items, size=size)
        u = generator.random(size) * cdf[-1]
        return np.minimum(np.searchsorted(cdf, u, side="right"), n_items - 1)

    # share of the proposal that falls on each user's positives: rejection sampling
    # needs 1 / (1 - share) rounds on average, so dense users are drawn exactly
    pos_users, pos_items = pos_keys // n_items, pos_keys % n_items
    mass: np.ndarray  # (n_users,) float64
    if cdf is None:
        mass = n_pos_per_user / n_items
    else:
        p = np.diff(cdf, prepend=0.0) / cdf[-1]
        mass = np.bincount(pos_users, weights=p[pos_items], minlength=len(n_pos_per_user))
    out = np.empty(len(rows_user), dtype=np.int64)
    dense = mass[rows_user] > _MAX_REJECTED_MASS
    pending = np.flatnonzero(~dense)
    if dense.any():
        _draw_exactly(out, np.flatnonzero(dense), rows_user, pos_keys, n_items, log_w, generator)
    for _ in range(_REJECTION_ROUNDS):
        if len(pending) == 0:
            break
        drawn = draw(len(pending))
        keys = rows_user[pending] * n_items + drawn
        where = np.minimum(np.searchsorted(pos_keys, keys), max(len(pos_keys) - 1, 0))
        rejected = pos_keys[where] == keys if len(pos_keys) else np.zeros(len(keys), bool)
        out[pending[~rejected]] = drawn[~rejected]
        pending = pending[rejected]
    if len(pending):
        _draw_exactly(out, pending, rows_user, pos_keys, n_items, log_w, generator)
    return out


def _draw_exactly(
    out: np.ndarray,
    pending: np.ndarray,
    rows_user: np.ndarray,
    pos_keys: np.ndarray,
    n_items: int,
    log_w: np.ndarray | None,
    generator: np.random.Generator,
) -> None:
    """Fill ``out[pending]`` from each user's allowed items (catalogue minus positives).

    One O(n_items) pass per user: a mask of the allowed items, then a uniform index
    into them or an inverse-CDF draw over their renormalised weights.
    """
    pending = pending[np.argsort(rows_user[pending], kind="stable")]
    users, starts = np.unique(rows_user[pending], return_index=True)
    ends = np.r_[starts[1:], len(pending)]
    allowed = np.ones(n_items, dtype=bool)
    for u, a, b in zip(users.tolist(), starts.tolist(), ends.tolist(), strict=True):
        lo, hi = np.searchsorted(pos_keys, [u * n_items, (u + 1) * n_items])
        held = pos_keys[lo:hi] - u * n_items
        allowed[held] = False
        codes = np.flatnonzero(allowed)
        if log_w is None:
            picks = codes[generator.integers(0, len(codes), size=b - a)]
        else:
            lw = log_w[codes]
            cdf = np.cumsum(np.exp(lw - lw.max()))
            at = np.searchsorted(cdf, generator.random(b - a) * cdf[-1], side="right")
            picks = codes[np.minimum(at, len(codes) - 1)]
        out[pending[a:b]] = picks
        allowed[held] = True
