"""Post-hoc probability calibration for click models (Bernoulli heads).

A calibrator is fitted on a held-out (validation) split of predicted click probabilities and
observed 0/1 clicks, then maps new probabilities to calibrated ones. Three techniques, one
class each:

- :class:`PlattScaling`: ``sigmoid(a * logit(p) + b)``, a logistic regression on the logit.
- :class:`TemperatureScaling`: ``sigmoid(logit(p) / T)`` with a single temperature ``T > 0``.
- :class:`IsotonicCalibration`: a monotone, piecewise-linear map fitted by isotonic
  regression (scikit-learn's ``IsotonicRegression``).

Every calibrator has ``fit(probs, labels) -> self``, ``transform(probs) -> Tensor`` and
``calibrate(prediction) -> Prediction``; the last maps the mean and, when the prediction is
sample-based (ensemble members, dropout samples), every sample, and recomputes the spread
from the mapped samples. ``state_dict()`` returns plain JSON-ready values (for a run
directory) and ``load_state_dict()`` restores them.

Probabilities are clipped to ``[1e-12, 1 - 1e-12]`` before taking logits so that a
saturated 0 or 1 maps to a large finite logit; all fitting runs in float64.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import torch
from scipy.optimize import brentq, minimize
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression
from torch import Tensor

from wager.errors import NotFittedError
from wager.prediction import Prediction

_EPS = 1e-12
_PROB_SUPPORT = (0.0, 1.0)


def clipped_logit(p: Any, eps: float = _EPS) -> np.ndarray:
    """float64 ``log(q / (1 - q))`` of probabilities ``p`` clipped into ``[eps, 1 - eps]``
    (finite at 0 and 1); any shape, numpy or torch."""
    if isinstance(p, Tensor):
        p = p.detach().cpu().numpy()
    q = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    return np.log(q) - np.log1p(-q)


def _logit_np(p: np.ndarray) -> np.ndarray:
    return clipped_logit(p)


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric array or tensor: {exc}") from None


def _check_probs(probs: Any, name: str = "probs") -> np.ndarray:
    """Validate a 1-D array of probabilities for fitting.

    Args:
        probs: (n,) predicted probabilities in [0, 1] (tensor, array or list).
        name: argument name used in error messages.

    Returns:
        (n,) float64 numpy copy.
    """
    p = _to_numpy(probs, name)
    if p.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D of shape (n,), got shape {p.shape}; flatten it with "
            ".reshape(-1) (and the labels the same way) first"
        )
    if p.size == 0:
        raise ValueError(f"{name} is empty; pass at least one calibration example")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name} contains NaN or inf; drop those rows before fitting")
    if np.any(p < 0.0) or np.any(p > 1.0):
        raise ValueError(
            f"{name} must be probabilities in [0, 1], got values in "
            f"[{p.min():.4g}, {p.max():.4g}]; pass sigmoid(logits), not raw logits or ratings"
        )
    return p


def _check_labels(
    labels: Any, n: int, name: str = "labels", probs_name: str = "probs"
) -> np.ndarray:
    """Validate 0/1 outcomes paired with ``n`` probabilities.

    Args:
        labels: (n,) 0/1 outcomes (bool, int or float).
        n: expected length (that of the probabilities).
        name: argument name used in error messages.
        probs_name: name of the paired probabilities, for the length-mismatch message.

    Returns:
        (n,) float64 numpy array of 0.0 / 1.0.
    """
    y = _to_numpy(labels, name)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D of shape (n,), got shape {y.shape}")
    if y.shape[0] != n:
        raise ValueError(
            f"{name} has {y.shape[0]} entries but {probs_name} has {n}; pass one 0/1 outcome "
            "per probability"
        )
    if not np.all((y == 0.0) | (y == 1.0)):
        bad = y[~((y == 0.0) | (y == 1.0))][:3].tolist()
        raise ValueError(
            f"{name} must be 0/1 outcomes, got e.g. {bad}; binarise them first (e.g. clicks > 0)"
        )
    return y


def _check_weights(weights: Any, n: int) -> np.ndarray:
    """(n,) float64 row weights, finite and >= 0, paired with ``n`` rows."""
    w = _to_numpy(weights, "weights")
    if w.shape != (n,):
        raise ValueError(f"weights has shape {w.shape}; pass one weight per row, shape ({n},)")
    if not (np.isfinite(w) & (w >= 0)).all():
        raise ValueError("weights must be finite and >= 0 (a row of weight w counts as w rows)")
    return w


def _prior_precision(prior: Any) -> np.ndarray:
    """The (2, 2) prior precision of :meth:`PlattScaling.fit`'s ``prior``, checked."""
    if isinstance(prior, int | float) and not isinstance(prior, bool):
        if not (math.isfinite(prior) and prior >= 0):
            raise ValueError(f"PlattScaling.fit: prior must be a finite number >= 0, got {prior!r}")
        return float(prior) * np.eye(2)
    m = np.asarray(prior, dtype=np.float64)
    if m.shape != (2, 2) or not np.isfinite(m).all() or not np.allclose(m, m.T):
        raise ValueError(
            "PlattScaling.fit: prior must be a number >= 0 or a symmetric (2, 2) precision "
            f"matrix over (slope - 1, intercept), got {prior!r}"
        )
    if np.linalg.eigvalsh(m).min() < -1e-12:
        raise ValueError(
            "PlattScaling.fit: the prior precision matrix must be positive semidefinite"
        )
    return m


def _require_both_classes(y: np.ndarray, who: str) -> None:
    if y.min() == y.max():
        raise ValueError(
            f"labels contain only {int(y[0])}s; {who} needs both clicks (1) and non-clicks (0) "
            "in the calibration split"
        )


def _logit_inputs(probs: Any, labels: Any, who: str) -> tuple[np.ndarray, np.ndarray]:
    """Checked (n,) logits of ``probs`` and (n,) 0/1 ``labels`` holding both classes."""
    p = _check_probs(probs)
    y = _check_labels(labels, p.size)
    _require_both_classes(y, who)
    return _logit_np(p), y


def _probs_tensor(probs: Tensor | np.ndarray | Any) -> Tensor:
    t = torch.as_tensor(probs)
    if not torch.is_floating_point(t):
        t = t.to(torch.get_default_dtype())
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError("probs contains NaN or inf")
    if t.numel() and (bool((t < 0).any()) or bool((t > 1).any())):
        raise ValueError(
            f"probs must be probabilities in [0, 1], got values in [{float(t.min()):.4g}, "
            f"{float(t.max()):.4g}]; pass sigmoid(logits), not raw logits"
        )
    return t


def _logit(t: Tensor) -> Tensor:
    return torch.logit(t.to(torch.float64), eps=_EPS)


class _ProbabilityCalibrator:
    """Shared transform/calibrate logic; subclasses implement ``_map`` on float64 tensors."""

    _suffix: str = ""

    def _fitted(self) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if not self._fitted():
            raise NotFittedError(
                f"{type(self).__name__} is not fitted: call fit(probs, labels) on a "
                "validation split first (or load_state_dict())"
            )

    def _map(self, p: Tensor) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def transform(self, probs: Tensor | np.ndarray) -> Tensor:
        """Map probabilities to calibrated probabilities.

        Args:
            probs: (...) predicted probabilities in [0, 1], any shape; a tensor keeps its
                device and floating dtype, anything else becomes a tensor of torch's
                default dtype (numpy float64 stays float64).

        Returns:
            (...) calibrated probabilities in [0, 1], same shape, dtype and device.
        """
        self._check_fitted()
        t = _probs_tensor(probs)
        return self._map(t.to(torch.float64)).to(t.dtype)

    def calibrate(self, prediction: Prediction) -> Prediction:
        """Calibrate a click-probability prediction.

        The mean is mapped by :meth:`transform` (the calibrator was fitted on means, so this
        keeps the mean's meaning: a calibrated click probability). When the prediction
        carries ``samples`` (S, ...) — ensemble members' or dropout samples' probabilities —
        each sample is mapped too and ``std`` = ``epistemic_std`` is recomputed as the
        population std of the mapped samples (the law of total variance of
        :meth:`Prediction.from_members` with no aleatoric part), plus any spread the samples
        do not carry (std^2 - their variance: the population part of cold-start rows) mapped
        as half the calibrator's rise over mean -+ that spread. A deterministic prediction
        (``std`` None) stays deterministic.

        Args:
            prediction: click-probability prediction with mean (...) in [0, 1], support
                (0, 1) or None, and no ``aleatoric_std`` (Bernoulli click noise is not part
                of a CTR prediction's std).

        Returns:
            A new Prediction with support (0, 1) and ``method`` suffixed with e.g. "+platt".
        """
        self._check_fitted()
        if prediction.support is not None and tuple(prediction.support) != _PROB_SUPPORT:
            raise ValueError(
                f"prediction.support is {prediction.support!r}, but calibrate() maps click "
                "probabilities with support (0.0, 1.0); use SplitConformal or VarianceScaling "
                "for ratings"
            )
        if prediction.aleatoric_std is not None:
            raise ValueError(
                "prediction.aleatoric_std is set, but a click-probability prediction's std is "
                "uncertainty about the probability itself; calibrate() cannot map a separate "
                "aleatoric part — pass a Prediction without aleatoric_std"
            )
        mean = self.transform(prediction.mean)
        if prediction.samples is None:
            if prediction.std is not None:
                raise ValueError(
                    "prediction has a std but no samples; calibrate() maps the spread through "
                    "the samples (S, ...) — predict with an Ensemble or MCDropout, which keep "
                    "them, or calibrate a deterministic prediction (std None)"
                )
            std = None
            samples = None
        else:
            samples = self.transform(prediction.samples)
            var = samples.var(dim=0, unbiased=False)
            if prediction.std is not None:
                # spread the samples do not carry (the population part of cold-start rows,
                # Prediction.from_members(population_var=...)): mapped by the calibrator's
                # secant over mean +- that spread
                raw = prediction.samples.var(dim=0, unbiased=False)
                extra = (prediction.std.square() - raw).clamp_min(0.0).sqrt()
                lo = (prediction.mean - extra).clamp(_EPS, 1.0 - _EPS)
                hi = (prediction.mean + extra).clamp(_EPS, 1.0 - _EPS)
                var = var + ((self.transform(hi) - self.transform(lo)) / 2).square()
            std = var.sqrt()
        method = f"{prediction.method}+{self._suffix}" if prediction.method else self._suffix
        return Prediction(
            mean=mean,
            std=std,
            aleatoric_std=None,
            epistemic_std=std,
            samples=samples,
            method=method,
            support=_PROB_SUPPORT,
            # the same M draws, mapped: still a Student-t of one more draw when it was one
            df=prediction.df if samples is not None else None,
        )


def check_state(state: dict[str, Any], kind: str, keys: tuple[str, ...]) -> None:
    """Check a saved calibrator state: its "kind" tag and required keys (for load_state_dict)."""
    if state.get("kind") != kind:
        raise ValueError(
            f"state['kind'] is {state.get('kind')!r}, expected {kind!r}; load the state into "
            "the class that saved it"
        )
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"state is missing {missing}; pass a dict saved by state_dict()")


class PlattScaling(_ProbabilityCalibrator):
    """Platt scaling: ``sigmoid(slope * logit(p) + intercept)``.

    ``slope`` and ``intercept`` minimise the mean log-loss of the labels (an unregularised
    logistic regression with logit(p) as the single feature; Platt's smoothed targets are
    not used), found with scipy's trust-region Newton method using the exact gradient and
    Hessian. On perfectly separated labels the minimiser does not exist and the fitted
    slope becomes very large.

    Attributes:
        slope_: fitted a (None before fit).
        intercept_: fitted b (None before fit).

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(4000, generator=g)
        >>> labels = torch.bernoulli(torch.sigmoid(2 * z), generator=g)
        >>> platt = PlattScaling().fit(torch.sigmoid(z), labels)
        >>> abs(platt.slope_ - 2.0) < 0.2, abs(platt.intercept_) < 0.2  # true map: 2, 0
        (True, True)
        >>> platt.transform(torch.tensor([0.5])).shape
        torch.Size([1])
    """

    _suffix = "platt"

    def __init__(self) -> None:
        self.slope_: float | None = None
        self.intercept_: float | None = None

    def _fitted(self) -> bool:
        return self.slope_ is not None and self.intercept_ is not None

    def fit(
        self,
        probs: Tensor | np.ndarray,
        labels: Tensor | np.ndarray,
        *,
        weights: Tensor | np.ndarray | None = None,
        prior: float | np.ndarray = 0.0,
    ) -> PlattScaling:
        """Fit slope and intercept on a calibration split.

        Args:
            probs: (n,) predicted click probabilities in [0, 1].
            labels: (n,) observed 0/1 clicks; both values must occur unless ``prior`` > 0.
            weights: (n,) finite weights >= 0: a row of weight w counts as w rows (e.g. the
                count of identical rows); default 1 each.
            prior: a Gaussian prior centred on the identity map (slope 1, intercept 0):
                a number ``c`` (precision ``c I``) or a (2, 2) precision matrix ``P`` over
                (slope - 1, intercept); the minimised loss is ``sum_i w_i logloss_i +
                d' P d / 2`` with ``d = (slope - 1, intercept)``. 0 (default): none. With a
                prior the fit exists for any rows, one class included (it stays near the
                identity until the rows outweigh the prior).

        Returns:
            self.
        """
        precision = _prior_precision(prior)
        p = _check_probs(probs)
        y = _check_labels(labels, p.size)
        if not precision.any():
            _require_both_classes(y, "PlattScaling")
        x = _logit_np(p)
        w = np.ones_like(x) if weights is None else _check_weights(weights, x.size)
        # a mean loss: gtol means the same for any n
        scale = max(float(w.sum()) + float(np.trace(precision)), 1e-12)
        identity = np.array([1.0, 0.0])

        def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
            z = theta[0] * x + theta[1]
            d = theta - identity
            # log-loss of sigmoid(z): softplus(z) - y z
            loss = np.dot(w, np.logaddexp(0.0, z) - y * z) + d @ precision @ d / 2
            r = w * (expit(z) - y)
            grad = np.array([np.dot(r, x), r.sum()]) + precision @ d
            return float(loss) / scale, grad / scale

        def hess(theta: np.ndarray) -> np.ndarray:
            s = expit(theta[0] * x + theta[1])
            v = w * s * (1.0 - s)
            h = np.array([[np.dot(v, x * x), np.dot(v, x)], [np.dot(v, x), v.sum()]])
            return (h + precision) / scale

        result = minimize(
            loss_grad,
            x0=np.array([1.0, 0.0]),
            jac=True,
            hess=hess,
            method="trust-exact",
            options={"gtol": 1e-10, "maxiter": 500},
        )
        self.slope_ = float(result.x[0])
        self.intercept_ = float(result.x[1])
        return self

    def _map(self, p: Tensor) -> Tensor:
        assert self.slope_ is not None and self.intercept_ is not None
        return torch.sigmoid(self.slope_ * _logit(p) + self.intercept_)

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state: {"kind": "platt", "slope": a, "intercept": b}."""
        self._check_fitted()
        return {"kind": "platt", "slope": self.slope_, "intercept": self.intercept_}

    def load_state_dict(self, state: dict[str, Any]) -> PlattScaling:
        """Restore from :meth:`state_dict`; returns self."""
        check_state(state, "platt", ("slope", "intercept"))
        self.slope_ = float(state["slope"])
        self.intercept_ = float(state["intercept"])
        return self


class TemperatureScaling(_ProbabilityCalibrator):
    """Temperature scaling: ``sigmoid(logit(p) / T)`` with one temperature ``T > 0``.

    ``T`` minimises the mean negative log-likelihood of the labels. The loss is convex in
    ``beta = 1 / T``, so the minimiser is the root of its derivative
    ``mean((sigmoid(beta * logit(p)) - y) * logit(p))``, found with Brent's root finder to
    machine precision. ``T > 1`` softens over-confident probabilities, ``T < 1`` sharpens
    under-confident ones. Fitting fails with a clear error when the probabilities rank the
    labels no better than chance (the optimum would be ``T = inf``) or separate them
    perfectly (``T = 0``).

    Attributes:
        temperature_: fitted T (None before fit).

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(4000, generator=g)
        >>> labels = torch.bernoulli(torch.sigmoid(2 * z), generator=g)
        >>> ts = TemperatureScaling().fit(torch.sigmoid(z), labels)
        >>> round(ts.temperature_, 1)
        0.5
    """

    _suffix = "temperature"

    def __init__(self) -> None:
        self.temperature_: float | None = None

    def _fitted(self) -> bool:
        return self.temperature_ is not None

    def fit(self, probs: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> TemperatureScaling:
        """Fit the temperature on a calibration split.

        Args:
            probs: (n,) predicted click probabilities in [0, 1].
            labels: (n,) observed 0/1 clicks; both values must occur.

        Returns:
            self.
        """
        x, y = _logit_inputs(probs, labels, "TemperatureScaling")

        def slope(beta: float) -> float:
            # d/d(beta) of mean log-loss of sigmoid(beta * x); increasing in beta
            return float(np.mean((expit(beta * x) - y) * x))

        if slope(0.0) >= 0.0:
            raise ValueError(
                "probs rank the labels no better than chance (higher probabilities do not go "
                "with more clicks), so the best temperature is infinite; check that probs "
                "and labels are aligned"
            )
        if x[y == 1.0].min() > x[y == 0.0].max():
            raise ValueError(
                "labels are perfectly separated by probs (every click has a higher probability "
                "than every non-click), so the best temperature is 0; use a larger calibration "
                "split"
            )
        hi = 1.0
        while slope(hi) < 0.0:  # without separation the slope turns positive
            hi *= 2.0
            if hi > 1e12:  # separated apart from ties at probability 0.5
                raise ValueError(
                    "labels are separated by probs up to ties at 0.5, so the best temperature "
                    "is 0; use a larger calibration split"
                )
        beta = brentq(slope, 0.0, hi, xtol=1e-14, rtol=1e-14, maxiter=500)
        self.temperature_ = float(1.0 / beta)
        return self

    def _map(self, p: Tensor) -> Tensor:
        assert self.temperature_ is not None
        return torch.sigmoid(_logit(p) / self.temperature_)

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state: {"kind": "temperature", "temperature": T}."""
        self._check_fitted()
        return {"kind": "temperature", "temperature": self.temperature_}

    def load_state_dict(self, state: dict[str, Any]) -> TemperatureScaling:
        """Restore from :meth:`state_dict`; returns self."""
        check_state(state, "temperature", ("temperature",))
        t = float(state["temperature"])
        if not (np.isfinite(t) and t > 0):
            raise ValueError(f"state['temperature'] must be a finite number > 0, got {t!r}")
        self.temperature_ = t
        return self


def _interpolate(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation, constant beyond the ends (like ``numpy.interp``).

    Args:
        x: (...) points to evaluate.
        xp: (m,) strictly increasing knots, m >= 1, same dtype and device as ``x``.
        fp: (m,) values at the knots.

    Returns:
        (...) interpolated values.
    """
    if xp.numel() == 1:
        return fp.expand(x.shape).clone()
    xc = x.clamp(xp[0], xp[-1])
    idx = torch.searchsorted(xp, xc.reshape(-1).contiguous(), right=True).clamp(1, xp.numel() - 1)
    x0, x1 = xp[idx - 1], xp[idx]
    y0, y1 = fp[idx - 1], fp[idx]
    w = (xc.reshape(-1) - x0) / (x1 - x0)
    return (y0 + w * (y1 - y0)).reshape(x.shape)


class IsotonicCalibration(_ProbabilityCalibrator):
    """Isotonic calibration: the best non-decreasing map from probability to click rate.

    Fitted with scikit-learn's ``IsotonicRegression(y_min=0, y_max=1, increasing=True,
    out_of_bounds="clip")``: the least-squares non-decreasing step fit of the labels,
    interpolated linearly between its thresholds, and constant (clipped) below the smallest
    and above the largest fitted probability. Only the thresholds are kept, so
    :meth:`transform` reproduces ``IsotonicRegression.predict`` in torch without scikit-learn.

    Attributes:
        x_thresholds_: (m,) increasing input probabilities of the fitted map (None before
            fit).
        y_thresholds_: (m,) non-decreasing calibrated probabilities at those inputs.

    Example:
        >>> iso = IsotonicCalibration().fit([0.1, 0.2, 0.6, 0.9], [0, 1, 0, 1])
        >>> iso.transform(torch.tensor([0.0, 0.4, 1.0]))
        tensor([0.0000, 0.5000, 1.0000])
    """

    _suffix = "isotonic"

    def __init__(self) -> None:
        self.x_thresholds_: list[float] | None = None
        self.y_thresholds_: list[float] | None = None

    def _fitted(self) -> bool:
        return self.x_thresholds_ is not None and self.y_thresholds_ is not None

    def fit(self, probs: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> IsotonicCalibration:
        """Fit the monotone map on a calibration split.

        Args:
            probs: (n,) predicted probabilities in [0, 1].
            labels: (n,) observed 0/1 outcomes.

        Returns:
            self.
        """
        p = _check_probs(probs)
        y = _check_labels(labels, p.size)
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        iso.fit(p, y)
        self.x_thresholds_ = [float(v) for v in iso.X_thresholds_]
        self.y_thresholds_ = [float(v) for v in iso.y_thresholds_]
        return self

    def _map(self, p: Tensor) -> Tensor:
        assert self.x_thresholds_ is not None and self.y_thresholds_ is not None
        xp = torch.tensor(self.x_thresholds_, dtype=torch.float64, device=p.device)
        fp = torch.tensor(self.y_thresholds_, dtype=torch.float64, device=p.device)
        return _interpolate(p, xp, fp)

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state: {"kind": "isotonic", "x_thresholds": [...], "y_thresholds": [...]}."""
        self._check_fitted()
        return {
            "kind": "isotonic",
            "x_thresholds": list(self.x_thresholds_ or []),
            "y_thresholds": list(self.y_thresholds_ or []),
        }

    def load_state_dict(self, state: dict[str, Any]) -> IsotonicCalibration:
        """Restore from :meth:`state_dict`; returns self."""
        check_state(state, "isotonic", ("x_thresholds", "y_thresholds"))
        xs = [float(v) for v in state["x_thresholds"]]
        ys = [float(v) for v in state["y_thresholds"]]
        if not xs or len(xs) != len(ys):
            raise ValueError(
                "state['x_thresholds'] and state['y_thresholds'] must be non-empty and of equal "
                f"length, got {len(xs)} and {len(ys)}"
            )
        if any(b <= a for a, b in itertools.pairwise(xs)):
            raise ValueError("state['x_thresholds'] must be strictly increasing")
        self.x_thresholds_ = xs
        self.y_thresholds_ = ys
        return self
