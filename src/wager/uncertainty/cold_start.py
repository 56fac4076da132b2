"""Cold start: make out-of-vocabulary (OOV) users, items and feature values less certain.

An id or feature value never seen in training is encoded as the OOV row of its embedding
table. Left as trained, that row is one point: every ensemble member predicts an unknown
user from (nearly) the same vector, so the members agree and the cold-start prediction
comes out *more* certain than a known user's. :func:`population_oov` fixes that after
training: in each member m the OOV row becomes

    oov'_m = base_m + (row_m[j_m] - mean_j row_m[j]),

where j_m is a known row drawn at random (a different one per member) and base_m is the
learned OOV row (when training replaced ids by OOV, ``[model] oov_rate`` > 0, so that it
learned the population's average) or else the members' average known row. The mean
prediction of an unknown user stays near the population average, and the members now
disagree by the spread of the population: "an unknown user is a random user", which is
the prior predictive of the hierarchical model the embeddings stand for. The same holds
for every categorical feature (an unseen brand is a random brand).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from wager.models.fields import Field

# stacked parameter names of FieldEmbedding tables: "<path>.vectors.<side>__<name>.weight"
_TABLE = re.compile(r"(?:^|\.)(?:vectors|biases)\.([A-Za-z0-9]+)__(.+)\.weight$")


def _known_rows(field: Field) -> tuple[int, int] | None:
    """(OOV row, first known row) of an index / bag table, or None for numeric fields."""
    if field.kind == "index":
        return 0, 1
    if field.kind == "bag":
        return 1, 2
    return None


def population_oov(
    params: dict[str, Tensor],
    fields: list[Field],
    generator: torch.Generator,
    learned: frozenset[str] = frozenset(),
) -> list[str]:
    """Replace, in place, each member's OOV embedding rows by population draws.

    Args:
        params: stacked parameters, name -> (M, ...) tensors (``StackedModel.params``);
            embedding tables are (M, rows, dim) (vectors) or (M, rows, 1) (biases).
        fields: the model's input fields (their keys name the tables, their kinds say
            where the OOV row is: row 0 for index fields, row 1 for bag fields).
        generator: seeded generator for the member-wise draws of known rows.
        learned: keys of the fields whose OOV row was trained on purpose (ids replaced by
            OOV during training, ``[model] oov_rate`` > 0): their OOV row learned the
            population average and is kept as the base; other fields use the member's
            average known row as the base.

    Returns:
        names of the tables changed (for logs and tests).

    Example:
        >>> t = torch.tensor([[[0.0], [1.0], [3.0]], [[0.0], [1.0], [3.0]]])  # (M=2, 3, 1)
        >>> p = {"user.vectors.user__id.weight": t.clone()}
        >>> _ = population_oov(p, [Field("user.id", "index", 3)], torch.Generator())
        >>> sorted(p["user.vectors.user__id.weight"][:, 0, 0].tolist()) in ([1.0, 1.0],
        ...     [1.0, 3.0], [3.0, 3.0])
        True
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
        if rows is None or table.ndim != 3:
            continue
        oov, first = rows
        n_known = table.shape[1] - first
        if n_known < 1:
            continue
        members = table.shape[0]
        with torch.no_grad():
            known = table[:, first:]  # (M, n_known, d)
            centre = known.mean(dim=1)  # (M, d)
            pick = torch.randint(n_known, (members,), generator=generator)
            drawn = known[torch.arange(members), pick.to(table.device)]  # (M, d)
            base = table[:, oov] if key in learned else centre
            table[:, oov] = base + drawn - centre
        changed.append(name)
    return changed
