"""Cold start: make out-of-vocabulary (OOV) users, items and feature values less certain.

An id or feature value never seen in training is encoded as the OOV row of its embedding
table. Left as trained, that row is one point: every ensemble member predicts an unknown
user from (nearly) the same vector, so the members agree and the cold-start prediction
comes out *more* certain than a known user's.

``[uncertainty] cold_start = "population"`` treats an unknown value as a random known
value ("an unknown user is a random user": the prior predictive of the hierarchical model
the embeddings stand for) and integrates over it. After training:

- :func:`centre_oov` sets each member's OOV rows to the member's average known row (kept
  as trained where ``[model] oov_rate`` > 0 made that row learn the average on purpose):
  the single point that paths ranking by one mean score use for an unknown value;
- :func:`draw_known_rows` draws, per member m and draw k = 1..K, a known row j_{m,k} of
  every index / bag field;
- at prediction time a row with any OOV value is evaluated K times per member with each
  OOV value replaced by j_{m,k} (:func:`oov_rows`, :func:`population_batch`, one batched
  pass). Member m's prediction is the average over its K draws, and the variance over
  the draws (the population's spread) is added to the spread of the members, so by the
  law of total variance the prediction's variance is that of all M * K draws. Known rows
  are untouched.

With one draw per member (as an earlier version did, writing j_{m} into the OOV row) the
ratio of cold to known std is the ratio of two 5-draw estimates, noisy enough that its
median fell below 1 for users on the synthetic world; K draws make the population part
an average over M * K values.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from wager.models.fields import Field

Batch = dict[str, Tensor]

# stacked parameter names of FieldEmbedding tables: "<path>.vectors.<side>__<name>.weight"
_TABLE = re.compile(r"(?:^|\.)(?:vectors|biases)\.([A-Za-z0-9]+)__(.+)\.weight$")


def _known_rows(field: Field) -> tuple[int, int] | None:
    """(OOV row, first known row) of an index / bag table, or None for numeric fields."""
    if field.kind == "index":
        return 0, 1
    if field.kind == "bag":
        return 1, 2
    return None


def centre_oov(
    params: dict[str, Tensor], fields: list[Field], learned: frozenset[str] = frozenset()
) -> list[str]:
    """Set, in place, each member's OOV embedding rows to its average known row.

    Args:
        params: stacked parameters, name -> (M, ...) tensors (``StackedModel.params``);
            embedding tables are (M, rows, dim) (vectors) or (M, rows, 1) (biases).
        fields: the model's input fields (their keys name the tables, their kinds say
            where the OOV row is: row 0 for index fields, row 1 for bag fields).
        learned: keys of the fields whose OOV row was trained on purpose (ids replaced by
            OOV during training, ``[model] oov_rate`` > 0): left as trained.

    Returns:
        names of the tables changed (for logs and tests).

    Example:
        >>> t = torch.tensor([[[9.0], [1.0], [3.0]]])  # (M=1, 3 rows, 1): OOV row 9
        >>> p = {"user.vectors.user__id.weight": t}
        >>> centre_oov(p, [Field("user.id", "index", 3)])
        ['user.vectors.user__id.weight']
        >>> p["user.vectors.user__id.weight"][0, 0].tolist()
        [2.0]
    """
    by_key = {f.key: f for f in fields}
    changed = []
    for name, table in params.items():
        match = _TABLE.search(name)
        if match is None:
            continue
        key = f"{match.group(1)}.{match.group(2)}"
        field = by_key.get(key)
        rows = _known_rows(field) if field is not None else None
        if rows is None or table.ndim != 3 or key in learned:
            continue
        oov, first = rows
        if table.shape[1] - first < 1:
            continue
        with torch.no_grad():
            table[:, oov] = table[:, first:].mean(dim=1)
        changed.append(name)
    return changed


def draw_known_rows(
    fields: list[Field], members: int, draws: int, generator: torch.Generator
) -> dict[str, Tensor]:
    """Known embedding rows standing in for an unknown value: K draws per member.

    Args:
        fields: the model's input fields; index and bag fields with at least one known
            row get draws (numeric fields none).
        members: M, ensemble members.
        draws: K >= 1 draws per member.
        generator: seeded generator (uniform draws over the known rows).

    Returns:
        {field key: (M, K) int64 known row indices}: rows 1..size-1 of an index field,
        2..size-1 of a bag field.

    Example:
        >>> d = draw_known_rows([Field("user.id", "index", 4)], 2, 3, torch.Generator())
        >>> d["user.id"].shape, bool(((d["user.id"] >= 1) & (d["user.id"] <= 3)).all())
        (torch.Size([2, 3]), True)
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    out: dict[str, Tensor] = {}
    for field in fields:
        rows = _known_rows(field)
        if rows is None or field.size - rows[1] < 1:
            continue
        out[field.key] = torch.randint(
            rows[1], field.size, (members, draws), generator=generator, dtype=torch.int64
        )
    return out


def _oov_entries(x: Tensor) -> Tensor:
    """Boolean mask of x's OOV entries: index 0 of an index field, token 1 of a bag."""
    return x == (0 if x.ndim == 1 else 1)


def oov_rows(batch: Batch, picks: dict[str, Tensor]) -> Tensor:
    """(B,) bool: rows holding an OOV value in any field that has draws.

    Args:
        batch: encoded rows; index fields (B,), bag fields (B, L) (0 = padding, 1 = OOV).
        picks: the output of :func:`draw_known_rows`.
    """
    any_x = next(iter(batch.values()))
    mask = torch.zeros(any_x.shape[0], dtype=torch.bool, device=any_x.device)
    for key in picks:
        x = batch.get(key)
        if x is None:
            continue
        hit = _oov_entries(x)
        mask |= hit if hit.ndim == 1 else hit.any(dim=-1)
    return mask


def population_batch(batch: Batch, picks: dict[str, Tensor]) -> Batch:
    """Per-member inputs with every OOV value replaced by each of the member's draws.

    Args:
        batch: B encoded rows.
        picks: {field key: (M, K) known rows}, the output of :func:`draw_known_rows`
            (all with the same M and K).

    Returns:
        batch of (M, K * B, ...) tensors, draw-major (entry k * B + b is row b under draw
        k): for a field with draws, member m's draw k replaces the OOV entries of every row
        by ``picks[key][m, k]``; everything else is the row's own value. Feed it to
        ``StackedModel.call(..., per_member=True)``.
    """
    first = next(iter(picks.values()))
    m, k = first.shape
    out: Batch = {}
    for key, x in batch.items():
        rep = x.unsqueeze(0).unsqueeze(0).expand(m, k, *x.shape)  # (M, K, B, ...)
        if key in picks:
            fill = picks[key].to(x.device).reshape(m, k, *([1] * x.ndim))
            rep = torch.where(_oov_entries(x), fill, rep)
        out[key] = rep.reshape(m, k * x.shape[0], *x.shape[1:])
    return out
