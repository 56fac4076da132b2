"""Relevance confidence for top-k lists.

A rating model predicts N(mean, std) per (user, item). :func:`relevance_probability` turns
that into the probability that the item is relevant, P(rating >= threshold) (e.g.
"4 stars or more"). For a top-k list, :func:`expected_hits` is the expected number of
relevant items in it and :func:`prob_at_least_one` the probability that at least one is
relevant. :class:`RelevanceCalibrator` corrects the raw probabilities with an isotonic map
fitted on a validation split, since a Gaussian tail is rarely calibrated out of the box.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from wager.errors import NotFittedError
from wager.prediction import Prediction
from wager.uncertainty.calibration import IsotonicCalibration, _check_labels, _check_probs


def relevance_probability(prediction: Prediction, threshold: float) -> Tensor:
    """P(rating >= threshold) under the Gaussian N(mean, std) of each prediction.

    With a support (low, high), the rating is the Gaussian clipped to the support (as in
    ``Prediction.interval()``): a threshold at or below ``low`` gives 1 and one above
    ``high`` gives 0; in between it is the Gaussian upper tail 1 - Phi((threshold - mean) /
    std). An entry with std 0 is a point mass: 1 if mean >= threshold, else 0.

    Args:
        prediction: rating prediction with mean (...) and std (...) >= 0, in rating units.
        threshold: rating that counts as relevant, e.g. 4.0 (same units).

    Returns:
        (...) probabilities in [0, 1], dtype and device of the mean.

    Example:
        >>> import torch
        >>> p = Prediction(mean=torch.tensor([4.0, 3.0]), std=torch.tensor([0.5, 1.0]))
        >>> relevance_probability(p, 4.0)
        tensor([0.5000, 0.1587])
    """
    threshold = float(threshold)
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite rating, e.g. 4.0, got {threshold!r}")
    if prediction.std is None:
        raise ValueError(
            f"prediction.std is None (a deterministic prediction, method={prediction.method!r})"
            "; relevance_probability() needs a predictive std — wrap the model in an Ensemble "
            "or MCDropout or use a Gaussian head"
        )
    mean, std = prediction.mean, prediction.std
    if bool((std < 0).any()):
        raise ValueError("prediction.std has negative entries; a std must be >= 0")
    point = (mean >= threshold).to(mean.dtype)
    z = (mean - threshold) / std.clamp_min(torch.finfo(std.dtype).tiny)
    p = torch.where(std > 0, torch.special.ndtr(z), point)
    if prediction.support is not None:
        low, high = prediction.support
        if threshold <= low:
            p = torch.ones_like(p)
        elif threshold > high:
            p = torch.zeros_like(p)
    return p


def _check_list_probs(p: Tensor) -> Tensor:
    if not isinstance(p, Tensor):
        raise ValueError(f"p must be a torch.Tensor of shape (U, k), got {type(p).__name__}")
    if p.ndim < 1:
        raise ValueError("p must have a last dimension (the k list slots), got a scalar")
    if not bool(torch.isfinite(p).all()) or bool((p < 0).any()) or bool((p > 1).any()):
        raise ValueError(
            "p must hold probabilities in [0, 1]; get them from relevance_probability() "
            "(or a click model's mean)"
        )
    return p


def expected_hits(p: Tensor) -> Tensor:
    """Expected number of relevant items in each list: the sum of the slot probabilities.

    Linearity of expectation: this needs no independence between slots.

    Args:
        p: (..., k) probability that each of the k listed items is relevant, e.g. (U, k)
            for U users' top-k lists.

    Returns:
        (...) expected hits in [0, k], e.g. (U,).

    Example:
        >>> expected_hits(torch.tensor([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]]))
        tensor([1., 1.])
    """
    return _check_list_probs(p).sum(dim=-1)


def prob_at_least_one(p: Tensor) -> Tensor:
    """Probability that at least one listed item is relevant, 1 - prod(1 - p).

    Assumes the slots' relevance events are independent given the predictions (the model's
    per-item uncertainty is not correlated across items); positively correlated errors make
    the true value lower. Computed as -expm1(sum(log1p(-p))) for accuracy at small p.

    Args:
        p: (..., k) probability that each of the k listed items is relevant.

    Returns:
        (...) probabilities in [0, 1], e.g. (U,).

    Example:
        >>> prob_at_least_one(torch.tensor([[0.5, 0.5], [0.1, 0.0]]))
        tensor([0.7500, 0.1000])
    """
    return -torch.expm1(torch.log1p(-_check_list_probs(p)).sum(dim=-1))


class RelevanceCalibrator:
    """Isotonic map from raw relevance probability to observed relevance frequency.

    Fitted on a validation split: raw probabilities (e.g. from :func:`relevance_probability`)
    against whether each item turned out relevant (rating >= threshold). The map is an
    :class:`~wager.uncertainty.calibration.IsotonicCalibration` (non-decreasing, clipped
    beyond the fitted range), so the ranking by raw probability is preserved up to ties.

    Attributes:
        isotonic_: the fitted isotonic map (None before fit).

    Example:
        >>> rc = RelevanceCalibrator().fit([0.2, 0.4, 0.6, 0.8], [0, 0, 1, 1])
        >>> rc.transform(torch.tensor([0.3, 0.7]))
        tensor([0., 1.])
    """

    def __init__(self) -> None:
        self.isotonic_: IsotonicCalibration | None = None

    def _check_fitted(self) -> IsotonicCalibration:
        if self.isotonic_ is None:
            raise NotFittedError(
                "RelevanceCalibrator is not fitted: call fit(raw_probs, relevant) on a "
                "validation split first (or load_state_dict())"
            )
        return self.isotonic_

    def fit(
        self, raw_probs: Tensor | np.ndarray, relevant: Tensor | np.ndarray
    ) -> RelevanceCalibrator:
        """Fit the isotonic map.

        Args:
            raw_probs: (n,) raw relevance probabilities in [0, 1].
            relevant: (n,) 0/1 observed relevance (1 = rating >= threshold).

        Returns:
            self.
        """
        p = _check_probs(raw_probs, "raw_probs")
        y = _check_labels(relevant, p.size, "relevant", "raw_probs")
        self.isotonic_ = IsotonicCalibration().fit(p, y)
        return self

    def transform(self, raw_probs: Tensor | np.ndarray) -> Tensor:
        """Calibrated relevance probabilities.

        Args:
            raw_probs: (...) raw relevance probabilities in [0, 1], any shape (e.g. (U, k)).

        Returns:
            (...) calibrated probabilities, same shape, dtype and device.
        """
        return self._check_fitted().transform(raw_probs)

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state: {"kind": "relevance_isotonic", "isotonic": {...}}."""
        return {"kind": "relevance_isotonic", "isotonic": self._check_fitted().state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> RelevanceCalibrator:
        """Restore from :meth:`state_dict`; returns self."""
        if state.get("kind") != "relevance_isotonic" or "isotonic" not in state:
            raise ValueError(
                f"state['kind'] is {state.get('kind')!r}, expected 'relevance_isotonic' with an "
                "'isotonic' entry; pass a dict saved by RelevanceCalibrator.state_dict()"
            )
        self.isotonic_ = IsotonicCalibration().load_state_dict(state["isotonic"])
        return self


class ScoreRelevanceCalibrator:
    """Isotonic map from a ranking score to the probability that a listed item is relevant.

    For retrieval and implicit models, whose scores (dot products, cosines) are not
    probabilities: fitted on validation users' top-k lists, each listed item's score against
    whether the item is among that user's validation positives. Scores are first squashed
    monotonically, ``sigmoid((score - centre) / scale)`` with the median and the
    interquartile range / 1.349 of the fitting scores, so that the isotonic map of an
    :class:`~wager.uncertainty.calibration.IsotonicCalibration` (inputs in [0, 1]) applies;
    a monotone squash leaves the isotonic fit unchanged.

    Attributes:
        centre_: median fitting score (None before fit).
        scale_: robust spread of the fitting scores (> 0).
        isotonic_: the fitted isotonic map on the squashed scores.

    Example:
        >>> sc = ScoreRelevanceCalibrator().fit([1.0, 2.0, 3.0, 4.0], [0, 0, 1, 1])
        >>> sc.transform(torch.tensor([1.5, 3.5])).tolist()
        [0.0, 1.0]
    """

    def __init__(self) -> None:
        self.centre_: float | None = None
        self.scale_: float | None = None
        self.isotonic_: IsotonicCalibration | None = None

    def _squash(self, scores: Tensor) -> Tensor:
        assert self.centre_ is not None and self.scale_ is not None
        return torch.sigmoid((scores.to(torch.float64) - self.centre_) / self.scale_)

    def fit(
        self, scores: Tensor | np.ndarray | list[float], relevant: Tensor | np.ndarray | list[int]
    ) -> ScoreRelevanceCalibrator:
        """Fit on listed items' scores and their 0/1 relevance.

        Args:
            scores: (n,) finite ranking scores of listed items.
            relevant: (n,) 0/1, 1 = the item turned out relevant for its user.

        Returns:
            self.
        """
        s = np.asarray(
            scores.detach().cpu().numpy() if isinstance(scores, Tensor) else scores,
            dtype=np.float64,
        )
        if s.ndim != 1 or s.size == 0 or not np.all(np.isfinite(s)):
            raise ValueError(
                f"scores must be a non-empty (n,) array of finite ranking scores, got shape "
                f"{s.shape}; pass the scores of the listed items"
            )
        y = _check_labels(relevant, s.size, "relevant", "scores")
        q1, med, q3 = np.quantile(s, [0.25, 0.5, 0.75])
        spread = (q3 - q1) / 1.349
        if not spread > 0:
            spread = float(s.std()) if s.std() > 0 else 1.0
        self.centre_, self.scale_ = float(med), float(spread)
        self.isotonic_ = IsotonicCalibration().fit(self._squash(torch.from_numpy(s)), y)
        return self

    def transform(self, scores: Tensor) -> Tensor:
        """(...) relevance probabilities of scores (...), dtype and device of the scores."""
        if self.isotonic_ is None:
            raise NotFittedError(
                "ScoreRelevanceCalibrator is not fitted: call fit(scores, relevant) on "
                "validation top-k lists first (or load_state_dict())"
            )
        dtype = scores.dtype if scores.is_floating_point() else torch.float32
        return self.isotonic_.transform(self._squash(scores)).to(dtype)

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state: kind "relevance_score_isotonic", centre, scale, isotonic."""
        if self.isotonic_ is None:
            raise NotFittedError("ScoreRelevanceCalibrator is not fitted: nothing to save")
        return {
            "kind": "relevance_score_isotonic",
            "centre": self.centre_,
            "scale": self.scale_,
            "isotonic": self.isotonic_.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> ScoreRelevanceCalibrator:
        """Restore from :meth:`state_dict`; returns self."""
        if state.get("kind") != "relevance_score_isotonic" or not {
            "centre",
            "scale",
            "isotonic",
        } <= set(state):
            raise ValueError(
                f"state['kind'] is {state.get('kind')!r}, expected 'relevance_score_isotonic' "
                "with centre, scale and isotonic; pass a dict saved by "
                "ScoreRelevanceCalibrator.state_dict()"
            )
        self.centre_, self.scale_ = float(state["centre"]), float(state["scale"])
        self.isotonic_ = IsotonicCalibration().load_state_dict(state["isotonic"])
        return self


def load_relevance_calibrator(
    state: dict[str, Any],
) -> RelevanceCalibrator | ScoreRelevanceCalibrator:
    """The relevance calibrator a saved state describes (dispatch on its "kind")."""
    if state.get("kind") == "relevance_score_isotonic":
        return ScoreRelevanceCalibrator().load_state_dict(state)
    return RelevanceCalibrator().load_state_dict(state)
