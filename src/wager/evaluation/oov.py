"""Cold-start analysis: how much less certain a model is when it does not know a feature.

For each categorical user / item / context field (ids included), every row is predicted
twice: with its real value and with that field set to out-of-vocabulary (as in the deep
density network paper). :func:`oov_stds` returns both stds per row;
:func:`oov_std_ratios` their summary by :func:`~wager.evaluation.uncertainty.oov_std_ratio`
(median of std_oov / std_real: above 1 means the model knows what it does not know).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from wager.data.features import InteractionEncoder
from wager.evaluation.uncertainty import oov_std_ratio
from wager.prediction import Prediction

Batch = dict[str, Tensor]


def oov_stds(
    encoder: InteractionEncoder,
    batch: Batch,
    predict: Callable[[Batch], Prediction],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-row predictive stds with each categorical field real and set to OOV.

    Args:
        encoder: the fitted encoder of the model (its fields and unknown tokens).
        batch: encoded rows (n, ...) as the model takes them.
        predict: encoded batch -> calibrated Prediction of its rows.

    Returns:
        {field key, e.g. "user.user_id": (real, cold)} for each categorical field with at
        least one known value in the rows: ``real`` is the (n_known,) std with the row's real
        value (clamped at 1e-12 so that ``cold / real`` is defined), ``cold`` the (n_known,)
        std with that field set to OOV (an index -> row 0; a categorical bag -> one OOV
        token; a hashed text bag -> the empty bag), both in the target's units, over the
        rows whose value is known. Empty for deterministic models.
    """
    base = predict(batch)
    if base.std is None:
        return {}
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for key, kind, _size in encoder.fields():
        if kind in ("numeric", "vector"):  # no OOV value: nothing to set unknown
            continue
        unknown = encoder.unknown_token(key)
        # known: an index other than OOV; a bag holding at least one real value
        known = batch[key] != 0 if kind == "index" else (batch[key] > unknown).any(-1)
        if not bool(known.any()):
            continue
        cold = dict(batch)
        cold[key] = torch.zeros_like(batch[key])  # index: OOV row 0; text bag: empty
        if kind != "index" and unknown:  # categorical bags: one OOV token, no padding
            cold[key][..., 0] = unknown
        std_cold = predict(cold).std
        assert std_cold is not None
        out[key] = (
            base.std[known].clamp_min(1e-12).cpu().numpy(),
            std_cold[known].cpu().numpy(),
        )
    return out


def oov_std_ratios(stds: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """{field key: median std_oov / std_real} of :func:`oov_stds`' output."""
    return {key: oov_std_ratio(cold, real) for key, (real, cold) in stds.items()}
