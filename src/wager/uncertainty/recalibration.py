"""Online recalibration: a click model's probabilities corrected from the clicks on what it served.

A click model is calibrated on its own validation rows, which the logging policy of its
training data chose. Served, it is judged on the items a policy picks: the top of its own
ranking (where a model that ranks by its estimate over-predicts: the winner's curse) and,
after any drift since the fit, on a traffic it never saw. Its predicted CTR then misses the
observed CTR by more than the noise (ML: ``benchmarks/closed_loop.py``, 7 of 20 seeds).

:class:`OnlineRecalibration` is the correction a service refits as feedback arrives: a Platt
map ``sigmoid(slope * logit(p) + intercept)`` of the model's own probability ``p`` (what the
model's post-hoc chain predicts, before this step), fitted on the served impressions and
their clicks with a Gaussian prior on the identity map (:meth:`PlattScaling.fit`'s
``prior``, in impressions: the map leaves the identity only as the evidence outweighs it).
The map is monotone (its slope is kept >= :data:`MIN_SLOPE`), so it never reorders a greedy
ranking; it is applied to the mean and to every member's probability (the spread is
recomputed, see :meth:`PlattScaling.calibrate`), or, for a prediction without samples, to
the mean with the std scaled by the map's derivative there (the delta method).

Each fit uses only impressions served before it (prequential): a prediction is never
corrected with its own outcome. :meth:`model_mean` inverts the map, so a service can log
the model's own probability beside the served one and refit on the former.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> p = rng.uniform(0.02, 0.3, 20_000)  # the model's probabilities ...
    >>> clicks = rng.random(20_000) < 0.7 * p  # ... over-predict by a factor 1/0.7
    >>> fix = OnlineRecalibration.fit(p, clicks, prior=100.0)
    >>> served = fix.transform_mean(p)
    >>> round(float(served.mean() / clicks.mean()), 2), round(float(p.mean() / clicks.mean()), 2)
    (1.0, 1.42)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from numpy.typing import ArrayLike

from wager.prediction import Prediction
from wager.uncertainty.calibration import PlattScaling, clipped_logit

__all__ = ["DEFAULT_PRIOR", "MIN_SLOPE", "OnlineRecalibration"]

#: default strength of the prior on the identity map, in impressions
DEFAULT_PRIOR = 200.0
#: the smallest slope a fit may have (a flat or reversed map would erase the ranking)
MIN_SLOPE = 0.2
_EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    return clipped_logit(p, _EPS)


def _expit(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


@dataclass(frozen=True)
class OnlineRecalibration:
    """One fitted recalibration map (immutable: a refit is a new object).

    Attributes:
        slope: a of ``sigmoid(a * logit(p) + b)``, >= :data:`MIN_SLOPE`.
        intercept: b.
        impressions: the served impressions it was fitted on.
        clicks: their clicks.
    """

    slope: float = 1.0
    intercept: float = 0.0
    impressions: int = 0
    clicks: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.slope) and self.slope >= MIN_SLOPE):
            raise ValueError(f"OnlineRecalibration: slope must be >= {MIN_SLOPE}, got {self.slope}")
        if not math.isfinite(self.intercept):
            raise ValueError(f"OnlineRecalibration: intercept must be finite, got {self.intercept}")

    @classmethod
    def fit(
        cls, model_means: ArrayLike, clicks: ArrayLike, *, prior: float = DEFAULT_PRIOR
    ) -> OnlineRecalibration:
        """The map fitted on served impressions.

        Args:
            model_means: (n,) the model's own click probabilities of the served items (before
                any recalibration), in [0, 1].
            clicks: (n,) 0/1 outcomes (an impression without a click is 0).
            prior: the prior's strength in impressions (> 0): a Gaussian prior on (slope,
                intercept) centred on the identity, whose precision is ``prior`` times the
                Fisher information of one of these impressions at the identity (so it weighs
                as much as ``prior`` impressions of the same means whose clicks agree with
                the model; a g-prior). With no rows the map is the identity.

        Returns:
            The fitted map; identical rows are fitted once with their count as weight.
        """
        if not (math.isfinite(prior) and prior > 0):
            raise ValueError(f"OnlineRecalibration.fit: prior must be > 0 impressions, got {prior}")
        p = np.asarray(model_means, dtype=np.float64).reshape(-1)
        y = np.asarray(clicks, dtype=np.float64).reshape(-1)
        if p.shape != y.shape:
            raise ValueError(
                f"OnlineRecalibration.fit: {p.size} model means but {y.size} clicks; pass one "
                "0/1 outcome per served impression"
            )
        if p.size == 0:
            return cls()
        rows, counts = np.unique(np.stack([np.round(_logit(p), 4), y]), axis=1, return_counts=True)
        weights = counts.astype(np.float64)
        platt = PlattScaling().fit(
            _expit(rows[0]), rows[1], weights=weights, prior=prior * _information(rows[0], weights)
        )
        assert platt.slope_ is not None and platt.intercept_ is not None
        return cls(max(platt.slope_, MIN_SLOPE), platt.intercept_, int(p.size), int(y.sum()))

    @property
    def identity(self) -> bool:
        """True when the map changes nothing."""
        return self.slope == 1.0 and self.intercept == 0.0

    @property
    def tag(self) -> str:
        """A short text naming the map (e.g. a cache key's part): equal maps, equal tags."""
        return f"{self.slope:.6g},{self.intercept:.6g}"

    def transform_mean(self, probs: ArrayLike) -> np.ndarray:
        """(...) served probabilities of the model's (...) probabilities (float64)."""
        p = np.asarray(probs, dtype=np.float64)
        return _expit(self.slope * _logit(p) + self.intercept)

    def model_mean(self, served: ArrayLike) -> np.ndarray:
        """(...) the model's probabilities that this map serves as ``served`` (the inverse
        of :meth:`transform_mean`, up to the clipping of probabilities into [1e-6, 1 - 1e-6])."""
        s = np.asarray(served, dtype=np.float64)
        return _expit((_logit(s) - self.intercept) / self.slope)

    def apply(self, prediction: Prediction) -> Prediction:
        """The recalibrated prediction of click probabilities (support (0, 1)).

        Sample-based predictions (ensembles, MC dropout) map every sample and the mean
        (:meth:`PlattScaling.calibrate`); others map the mean and scale the std by the map's
        derivative at the mean. The identity map returns ``prediction`` itself.
        """
        if self.identity:
            return prediction
        platt = PlattScaling()
        platt.slope_, platt.intercept_ = self.slope, self.intercept
        if prediction.samples is not None or prediction.std is None:
            out = platt.calibrate(prediction)
            return _renamed(out, prediction.method)
        mean = prediction.mean.detach().to(torch.float64)
        served = platt.transform(mean)
        q = mean.clamp(_EPS, 1.0 - _EPS)
        # d served / d p = slope * s (1 - s) / (p (1 - p))
        slope = self.slope * served * (1.0 - served) / (q * (1.0 - q))
        std = (prediction.std.to(torch.float64) * slope).to(prediction.std.dtype)
        return Prediction(
            mean=served.to(prediction.mean.dtype),
            std=std,
            epistemic_std=std,
            method=f"{prediction.method}+online" if prediction.method else "online",
            support=(0.0, 1.0),
        )


def _information(logits: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The mean Fisher information of one impression about (slope, intercept) at the
    identity map, ``E[p (1 - p) [[x^2, x], [x, 1]]]`` with ``x = logit(p)`` over the rows:
    the prior's precision per impression, so a prior of c is worth c such impressions."""
    v = weights * _expit(logits) * (1.0 - _expit(logits))
    total = max(float(weights.sum()), 1e-12)
    xv = float(np.dot(v, logits)) / total
    return np.array([[float(np.dot(v, logits**2)) / total, xv], [xv, float(v.sum()) / total]])


def _renamed(prediction: Prediction, method: str | None) -> Prediction:
    """``prediction`` with the method of the input suffixed "+online" (not "+platt")."""
    return replace(prediction, method=f"{method}+online" if method else "online")
