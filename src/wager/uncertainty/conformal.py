"""Conformal prediction intervals and variance recalibration for real-valued targets.

- :class:`SplitConformal` conformalizes a :class:`~wager.prediction.Prediction`: fitted on a
  calibration (validation) split, it returns intervals ``mean ± q * std`` (normalized) or
  ``mean ± q`` (homoscedastic baseline) that hold the target with probability at least
  ``confidence_level`` whenever calibration and test points are exchangeable — whatever
  the model, however wrong its std.
- :class:`VarianceScaling` rescales a Gaussian prediction's std by a single factor fitted
  by maximum likelihood, so that ``Prediction.interval()`` has roughly the right coverage
  on average (no finite-sample guarantee).

Both keep JSON-ready state (``state_dict()`` / ``load_state_dict()``) for a run directory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from wager.errors import NotFittedError
from wager.prediction import Interval, Prediction
from wager.uncertainty.calibration import check_state

# relative slack on (n + 1) * level, absorbing floating-point error such as 10 * 0.9 landing
# a hair above 9 (which would otherwise pick the 10th score instead of the 9th)
_RANK_RTOL = 1e-9


def _check_level(confidence_level: float, name: str = "confidence_level") -> float:
    level = float(confidence_level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"{name} must be in (0, 1), e.g. 0.9, got {confidence_level!r}")
    return level


def _flat_targets(prediction: Prediction, targets: Tensor | np.ndarray) -> np.ndarray:
    y = targets.detach().cpu().numpy() if isinstance(targets, Tensor) else np.asarray(targets)
    y = y.astype(np.float64)
    shape = tuple(prediction.mean.shape)
    if y.shape != shape:
        raise ValueError(
            f"targets has shape {y.shape} but prediction.mean has shape {shape}; pass one "
            "target per prediction"
        )
    if y.size == 0:
        raise ValueError("targets is empty; pass at least one calibration example")
    if not np.all(np.isfinite(y)):
        raise ValueError("targets contains NaN or inf; drop those rows before fitting")
    return y.reshape(-1)


def _flat(t: Tensor, name: str) -> np.ndarray:
    a = t.detach().cpu().to(torch.float64).numpy().reshape(-1)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a


def _positive_std(prediction: Prediction, who: str) -> np.ndarray:
    if prediction.std is None:
        raise ValueError(
            f"prediction.std is None (a deterministic prediction, method="
            f"{prediction.method!r}); {who} needs a std: wrap the model in an Ensemble or "
            "MCDropout or use a Gaussian head"
            + (", or use SplitConformal(normalized=False)" if who.startswith("Split") else "")
        )
    s = _flat(prediction.std, "prediction.std")
    if np.any(s <= 0.0):
        raise ValueError(
            f"prediction.std has {int(np.sum(s <= 0.0))} entries <= 0; {who} divides by the "
            "std — floor it (e.g. std.clamp_min(1e-6)) or use SplitConformal(normalized=False)"
        )
    return s


def conformal_rank(n: int, confidence_level: float) -> int:
    """The rank k = ceil((n + 1) * confidence_level) of the split-conformal score quantile.

    Args:
        n: number of calibration scores (>= 1).
        confidence_level: target coverage in (0, 1).

    Returns:
        k in [1, n + 1]; k = n + 1 means the quantile is infinite.

    Example:
        >>> conformal_rank(9, 0.9), conformal_rank(9, 0.95)
        (9, 10)
    """
    x = (n + 1) * _check_level(confidence_level)
    return max(1, math.ceil(x - _RANK_RTOL * x))


class SplitConformal:
    """Split-conformal prediction intervals around a Prediction's mean.

    Fitted on a calibration split, the nonconformity scores are ``|y - mean| / std``
    (``normalized=True``: intervals adapt to each prediction's std) or ``|y - mean|``
    (``normalized=False``: one constant width, the homoscedastic baseline, usable with
    deterministic predictions). With n scores the quantile for ``confidence_level`` is the
    k-th smallest score, k = ceil((n + 1) * confidence_level). For a new point exchangeable
    with the calibration points, ``mean ± q * std`` then contains the target with
    probability at least ``confidence_level`` (over calibration and test draws), and at
    most ``confidence_level + 1 / (n + 1)`` when scores have no ties. When k > n (i.e.
    ``confidence_level > n / (n + 1)``: too few calibration points for that level) the
    quantile is infinite and the interval is the whole support — the only interval with the
    guarantee. The sorted scores are stored, so intervals for any level can be produced.

    Args:
        normalized: divide scores by the prediction's std (True) or not (False).
        std_floor: with ``normalized``, the std is taken as max(std, std_floor), both in
            scores and intervals; > 0 keeps predictions whose std is 0 (e.g. all ensemble
            members clipped to the same bound) usable.

    Attributes:
        scores_: (n,) sorted calibration scores, float64 (None before fit).
        quantiles_: confidence_level -> score quantile for the levels given to fit().

    Example:
        >>> import torch
        >>> from wager.prediction import Prediction
        >>> cal = Prediction(mean=torch.zeros(9), std=torch.ones(9))
        >>> cp = SplitConformal().fit(cal, torch.arange(1.0, 10.0), confidence_levels=(0.9,))
        >>> cp.quantiles_
        {0.9: 9.0}
        >>> iv = cp.interval(Prediction(mean=torch.tensor([3.0]), std=torch.tensor([0.5])), 0.9)
        >>> iv.low, iv.high
        (tensor([-1.5000]), tensor([7.5000]))
    """

    def __init__(self, normalized: bool = True, std_floor: float = 0.0) -> None:
        if not std_floor >= 0:
            raise ValueError(f"std_floor must be >= 0, got {std_floor!r}")
        self.normalized = normalized
        self.std_floor = float(std_floor)
        self.scores_: np.ndarray | None = None
        self.quantiles_: dict[float, float] = {}

    def _check_fitted(self) -> np.ndarray:
        if self.scores_ is None:
            raise NotFittedError(
                "SplitConformal is not fitted: call fit(prediction, targets) on a calibration "
                "split first (or load_state_dict())"
            )
        return self.scores_

    def fit(
        self,
        prediction: Prediction,
        targets: Tensor | np.ndarray,
        confidence_levels: Sequence[float] = (0.5, 0.8, 0.9, 0.95),
    ) -> SplitConformal:
        """Compute and store the calibration scores and their quantiles.

        Args:
            prediction: predictions on the calibration split, mean (...) and, when
                normalized, std (...) > 0.
            targets: (...) observed targets, same shape as ``prediction.mean``, same units.
            confidence_levels: levels whose quantiles are precomputed into ``quantiles_``
                (any other level still works in :meth:`interval`).

        Returns:
            self.
        """
        levels = [_check_level(c, "confidence_levels entry") for c in confidence_levels]
        y = _flat_targets(prediction, targets)
        mu = _flat(prediction.mean, "prediction.mean")
        residual = np.abs(y - mu)
        if self.normalized:
            residual = residual / self._std(prediction)
        self.scores_ = np.sort(residual)
        self.quantiles_ = {level: self.score_quantile(level) for level in levels}
        return self

    def _std(self, prediction: Prediction) -> np.ndarray:
        """(n,) the std the scores divide by: max(std, std_floor), which must be > 0."""
        if self.std_floor > 0 and prediction.std is not None:
            floored = replace(prediction, std=prediction.std.clamp_min(self.std_floor))
            return _positive_std(floored, "SplitConformal(normalized=True)")
        return _positive_std(prediction, "SplitConformal(normalized=True)")

    def score_quantile(self, confidence_level: float) -> float:
        """The finite-sample score quantile q for ``confidence_level``.

        Args:
            confidence_level: target coverage in (0, 1).

        Returns:
            The ceil((n + 1) * confidence_level)-th smallest calibration score, or ``inf``
            when that rank exceeds n. In the units of the target (normalized=False) or in
            stds (normalized=True).
        """
        scores = self._check_fitted()
        k = conformal_rank(scores.size, confidence_level)
        return math.inf if k > scores.size else float(scores[k - 1])

    def interval(self, prediction: Prediction, confidence_level: float = 0.9) -> Interval:
        """Conformal interval ``mean ± q * std`` (or ``mean ± q``), clipped to the support.

        Args:
            prediction: predictions to wrap, mean (...) and, when normalized, std (...).
            confidence_level: target coverage in (0, 1).

        Returns:
            Interval with low/high (...) of the mean's dtype and device; infinite (then
            clipped to ``prediction.support``) when the quantile is infinite.
        """
        q = self.score_quantile(confidence_level)
        mean = prediction.mean
        if self.normalized:
            if prediction.std is None:
                raise ValueError(
                    f"prediction.std is None (method={prediction.method!r}), but this "
                    "SplitConformal was fitted with normalized=True; pass a prediction with a "
                    "std or fit SplitConformal(normalized=False)"
                )
            std = prediction.std.clamp_min(self.std_floor)
            half = std * q if math.isfinite(q) else torch.full_like(mean, math.inf)
        else:
            half = torch.full_like(mean, q)
        low, high = mean - half, mean + half
        if prediction.support is not None:
            lo, hi = prediction.support
            low, high = low.clamp(lo, hi), high.clamp(lo, hi)
        return Interval(low=low, high=high, confidence_level=float(confidence_level))

    def conformalize(self, prediction: Prediction) -> ConformalPrediction:
        """The same prediction, whose ``interval()`` / ``quantile()`` are now conformal.

        Mean, std and samples are unchanged; every consumer that asks the prediction for an
        interval (recommend, evaluation, serving) gets this calibrator's interval.
        """
        self._check_fitted()
        return ConformalPrediction(
            **{f.name: getattr(prediction, f.name) for f in fields(Prediction)},
            conformal=self,
        )

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state: normalized flag, sorted scores and the fitted levels."""
        scores = self._check_fitted()
        return {
            "kind": "split_conformal",
            "normalized": bool(self.normalized),
            "std_floor": self.std_floor,
            "scores": [float(s) for s in scores],
            "confidence_levels": sorted(self.quantiles_),
        }

    def load_state_dict(self, state: dict[str, Any]) -> SplitConformal:
        """Restore from :meth:`state_dict` (quantiles are recomputed); returns self."""
        check_state(state, "split_conformal", ("normalized", "scores", "confidence_levels"))
        scores = np.asarray(state["scores"], dtype=np.float64)
        if scores.ndim != 1 or scores.size == 0 or not np.all(np.isfinite(scores)):
            raise ValueError("state['scores'] must be a non-empty list of finite numbers")
        self.normalized = bool(state["normalized"])
        self.std_floor = float(state.get("std_floor", 0.0))
        self.scores_ = np.sort(scores)
        self.quantiles_ = {
            _check_level(c, "state['confidence_levels'] entry"): 0.0
            for c in state["confidence_levels"]
        }
        self.quantiles_ = {level: self.score_quantile(level) for level in self.quantiles_}
        return self


def rescale_std(prediction: Prediction, factor: float | Tensor, who: str) -> Prediction:
    """``prediction`` with std, aleatoric_std and epistemic_std multiplied by ``factor``.

    The mean and support stay; ``samples`` spread about their average by the factor (clipped
    to the support); the method is suffixed by the calibrator's name in snake case. The
    result is Gaussian (``df`` None): the factor was fitted to the Gaussian likelihood.

    Args:
        prediction: prediction with a std.
        factor: one scale > 0, or a (...) tensor of per-prediction scales shaped like the mean.
        who: the calibrator's class name, for the error message and the method suffix.
    """
    if prediction.std is None:
        raise ValueError(
            f"prediction.std is None (method={prediction.method!r}); {who} rescales a std "
            "— pass a prediction with uncertainty"
        )
    if isinstance(factor, Tensor):
        factor = factor.to(device=prediction.std.device, dtype=prediction.std.dtype)

    def scaled(t: Tensor | None) -> Tensor | None:
        return None if t is None else t * factor

    samples = prediction.samples
    if samples is not None:
        centre = samples.mean(dim=0, keepdim=True)
        samples = centre + factor * (samples - centre)
        if prediction.support is not None:
            samples = samples.clamp(prediction.support[0], prediction.support[1])
    suffix = "".join("_" + c.lower() if c.isupper() else c for c in who).lstrip("_")
    return Prediction(
        mean=prediction.mean,
        std=scaled(prediction.std),
        aleatoric_std=scaled(prediction.aleatoric_std),
        epistemic_std=scaled(prediction.epistemic_std),
        samples=samples,
        method=f"{prediction.method}+{suffix}" if prediction.method else suffix,
        support=prediction.support,
        # the rescaled std is a fitted Gaussian std, no longer the spread of M draws
        df=None,
    )


class VarianceScaling:
    """Rescale a Gaussian prediction's std by one factor s fitted by maximum likelihood.

    On the calibration split, s maximises the Gaussian log-likelihood of the targets under
    N(mean, (s * std)^2); setting the derivative of
    ``sum(log(s * std) + (y - mean)^2 / (2 s^2 std^2))`` to zero gives the closed form
    ``s^2 = mean((y - mean)^2 / std^2)``. :meth:`transform` multiplies std, aleatoric_std and
    epistemic_std by s, and spreads ``samples`` about their average by s (clipped to the
    support), keeping the mean. Unlike :class:`SplitConformal` this has no finite-sample
    coverage guarantee; it fixes an over- or under-dispersed std on average.

    Attributes:
        scale_: fitted s > 0 (None before fit).

    Example:
        >>> import torch
        >>> from wager.prediction import Prediction
        >>> cal = Prediction(mean=torch.zeros(2), std=torch.ones(2))
        >>> vs = VarianceScaling().fit(cal, torch.tensor([1.0, -3.0]))
        >>> round(vs.scale_ ** 2, 6)  # mean(1, 9)
        5.0
    """

    def __init__(self) -> None:
        self.scale_: float | None = None

    def _check_fitted(self) -> float:
        if self.scale_ is None:
            raise NotFittedError(
                "VarianceScaling is not fitted: call fit(prediction, targets) on a calibration "
                "split first (or load_state_dict())"
            )
        return self.scale_

    def fit(self, prediction: Prediction, targets: Tensor | np.ndarray) -> VarianceScaling:
        """Fit the scale on a calibration split.

        Args:
            prediction: calibration predictions with mean (...) and std (...) > 0.
            targets: (...) observed targets, same shape as ``prediction.mean``.

        Returns:
            self.
        """
        y = _flat_targets(prediction, targets)
        mu = _flat(prediction.mean, "prediction.mean")
        s = _positive_std(prediction, "VarianceScaling")
        scale = float(np.sqrt(np.mean(((y - mu) / s) ** 2)))
        if scale <= 0.0:
            raise ValueError(
                "targets equal prediction.mean exactly on every row, so the fitted scale is 0; "
                "calibrate on held-out data, not on the training targets"
            )
        self.scale_ = scale
        return self

    def transform(self, prediction: Prediction) -> Prediction:
        """Prediction with every std part multiplied by the fitted scale.

        Args:
            prediction: prediction with std (...) to rescale.

        Returns:
            New Prediction; same mean and support, method suffixed "+variance_scaling".
        """
        return rescale_std(prediction, self._check_fitted(), "VarianceScaling")

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state: {"kind": "variance_scaling", "scale": s}."""
        return {"kind": "variance_scaling", "scale": self._check_fitted()}

    def load_state_dict(self, state: dict[str, Any]) -> VarianceScaling:
        """Restore from :meth:`state_dict`; returns self."""
        check_state(state, "variance_scaling", ("scale",))
        s = float(state["scale"])
        if not (math.isfinite(s) and s > 0.0):
            raise ValueError(f"state['scale'] must be a finite number > 0, got {s!r}")
        self.scale_ = s
        return self


@dataclass(frozen=True, kw_only=True)
class ConformalPrediction(Prediction):
    """A :class:`~wager.prediction.Prediction` whose intervals come from a fitted
    :class:`SplitConformal` (made by :meth:`SplitConformal.conformalize`).

    Attributes:
        conformal: the fitted calibrator that makes ``interval()`` and ``quantile()``.

    Example:
        >>> cal = Prediction(mean=torch.zeros(9), std=torch.ones(9))
        >>> cp = SplitConformal().fit(cal, torch.arange(1.0, 10.0), confidence_levels=(0.9,))
        >>> p = cp.conformalize(Prediction(mean=torch.tensor([3.0]), std=torch.tensor([0.5])))
        >>> p.interval(0.9).high
        tensor([7.5000])
    """

    conformal: SplitConformal = field(compare=False, repr=False)

    def interval(self, confidence_level: float = 0.9) -> Interval:
        """The split-conformal interval at ``confidence_level``."""
        return self.conformal.interval(self, confidence_level)

    def quantile(self, q: float) -> Tensor:
        """(...) the q-quantile implied by the central conformal intervals: for q < 0.5 the
        low end of the (1 - 2q) interval, for q > 0.5 the high end of the (2q - 1) one, and
        the mean at q = 0.5."""
        if not 0.0 < q < 1.0:
            raise ValueError(f"quantile q must be in (0, 1), got {q!r}")
        if q == 0.5:
            return self._clip(self.mean)
        if q < 0.5:
            return self.interval(1.0 - 2.0 * q).low
        return self.interval(2.0 * q - 1.0).high

    def __getitem__(self, index: Any) -> ConformalPrediction:
        """Select predictions; the calibrator stays attached."""
        base = Prediction.__getitem__(self, index)
        return self.conformal.conformalize(base)
