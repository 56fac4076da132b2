"""Online updates between fits: a click model's prediction, updated with the clicks seen since.

A model refitted in batches (each evening) predicts the same click probability all day,
while a live service sees clicks within minutes. :func:`beta_posterior` folds the
impressions and clicks observed since the last fit into the model's prediction without
touching the model: each (request, candidate) prediction of a click probability, mean ``m``
and std ``s``, is read as a prior on that CTR, moment-matched to a Beta(a, b)
(``a + b = m (1 - m) / s**2 - 1``, ``a = m (a + b)``), updated with the clicks and
non-clicks (Beta-binomial conjugacy) and returned as the posterior's mean and std.

Concentration bounds: a Beta with mean ``m`` has a variance below ``m (1 - m)``, so a std
at or above ``sqrt(m (1 - m))`` (a Gaussian wider than any Beta of that mean) has no
moment match; the prior's concentration ``a + b`` is floored at ``min_concentration``
(default 1: a Beta whose variance is half the largest possible, worth one observation). A
std of 0 claims certainty (``a + b`` infinite); it is capped at ``max_concentration``
(default 1e6 pseudo-observations, which a day of clicks barely moves). Means are clamped
into ``[1e-6, 1 - 1e-6]`` so that ``a`` and ``b`` stay positive.

Position bias: a click at a position whose examination probability is ``bias < 1`` is
evidence about the position-1 CTR ``p`` (``P(click) = bias * p``). The likelihood of a
click (``bias * p``, proportional to ``p``) adds 1 to ``a``; the likelihood of a non-click,
``1 - bias * p ~ (1 - p) ** bias`` (equal to first order in ``p``, and within 2% for
``p <= 0.3``, ``bias >= 0.5``), adds ``bias`` to ``b``. So the caller passes
**effective impressions**: clicks plus the examination probabilities of the non-clicked
impressions (``clicks + sum(bias[position] for each non-click)``); without a position
effect they are plain impression counts. This keeps the update conjugate.

The whole predictive std is read as uncertainty about the CTR (a model's aleatoric part, if
any, widens the prior and so weakens it).

Example:
    >>> import torch
    >>> from wager.prediction import Prediction
    >>> prior = Prediction(torch.tensor([[0.2]]), std=torch.tensor([[0.1]]))  # Beta(3, 12)
    >>> post = beta_posterior(prior, impressions=[10.0], clicks=[5.0])  # Beta(8, 17)
    >>> round(float(post.mean[0, 0]), 4), round(float(post.std[0, 0]), 4)
    (0.32, 0.0915)
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numpy.typing import ArrayLike

from wager.prediction import Prediction

__all__ = [
    "DEFAULT_MAX_CONCENTRATION",
    "DEFAULT_MIN_CONCENTRATION",
    "beta_posterior",
    "prior_concentration",
]

#: the floor of a prior's concentration a + b (a std too wide for any Beta of its mean)
DEFAULT_MIN_CONCENTRATION = 1.0
#: the cap of a prior's concentration a + b (a std of 0)
DEFAULT_MAX_CONCENTRATION = 1e6
_MEAN_EPS = 1e-6


def _counts(name: str, value: ArrayLike, shape: tuple[int, int]) -> np.ndarray:
    """(B, C) float64 counts broadcast from (C,) or (B, C), checked finite and >= 0."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape not in (shape[1:], shape):
        raise ValueError(
            f"beta_posterior: {name} has shape {arr.shape}, expected ({shape[1]},) per candidate "
            f"column or {shape} per request and column (the prediction's shape)"
        )
    if not (np.isfinite(arr) & (arr >= 0)).all():
        raise ValueError(
            f"beta_posterior: every entry of {name} must be a finite count >= 0, got "
            f"{arr.reshape(-1)[~(np.isfinite(arr.reshape(-1)) & (arr.reshape(-1) >= 0))][0]!r}"
        )
    return np.broadcast_to(arr, shape)


def _prior(prediction: Prediction) -> tuple[np.ndarray, np.ndarray]:
    """(B, C) float64 prior mean and std of a click-probability prediction, checked."""
    if prediction.mean.ndim != 2:
        raise ValueError(
            "beta_posterior: the prediction must be (B, C) = (requests, candidates), got shape "
            f"{tuple(prediction.mean.shape)}"
        )
    if prediction.std is None:
        raise ValueError(
            "beta_posterior needs the prediction's std (the prior's width), but it is "
            f"deterministic (method={prediction.method!r}): wrap the model in an ensemble or "
            "MC dropout, or turn online updates off"
        )
    mean = prediction.mean.detach().to("cpu", torch.float64).numpy()
    std = prediction.std.detach().to("cpu", torch.float64).numpy()
    if not (np.isfinite(mean) & (mean >= 0) & (mean <= 1)).all():
        raise ValueError(
            "beta_posterior needs click probabilities, but a mean is not in [0, 1] (e.g. "
            f"{mean[~(np.isfinite(mean) & (mean >= 0) & (mean <= 1))][0]!r}): online updates "
            "apply to click models only"
        )
    if not (np.isfinite(std) & (std >= 0)).all():
        raise ValueError(
            "beta_posterior: every std must be a finite number >= 0, got "
            f"{std[~(np.isfinite(std) & (std >= 0))][0]!r}"
        )
    return mean, std


def prior_concentration(
    mean: np.ndarray,
    std: np.ndarray,
    min_concentration: float = DEFAULT_MIN_CONCENTRATION,
    max_concentration: float = DEFAULT_MAX_CONCENTRATION,
) -> np.ndarray:
    """The moment-matched Beta's ``a + b = m (1 - m) / s**2 - 1``, clamped into
    ``[min_concentration, max_concentration]`` (std 0 -> the cap; std too wide -> the floor).

    Args:
        mean: (...) click probabilities, already clamped into (0, 1).
        std: (...) stds >= 0.
    """
    var = np.square(std)
    with np.errstate(divide="ignore", invalid="ignore"):
        nu = np.where(var > 0, mean * (1.0 - mean) / np.where(var > 0, var, 1.0) - 1.0, np.inf)
    return np.clip(nu, min_concentration, max_concentration)


def beta_posterior(
    prediction: Prediction,
    impressions: ArrayLike,
    clicks: ArrayLike,
    *,
    min_concentration: float = DEFAULT_MIN_CONCENTRATION,
    max_concentration: float = DEFAULT_MAX_CONCENTRATION,
    draws: int = 0,
    generator: np.random.Generator | None = None,
) -> Prediction:
    """The prediction of click probabilities updated with the clicks seen since the fit.

    See the module docstring for the moment match, the concentration bounds and the
    position bias (pass effective impressions).

    Args:
        prediction: (B, C) click-probability prediction with a std (any kind: for sample or
            mixture predictions their mean and total std make the prior).
        impressions: (C,) per candidate column or (B, C) (effective) impressions observed
            since the model was fitted, >= clicks.
        clicks: the clicks among them, same shape.
        min_concentration: floor of the prior's a + b (> 0).
        max_concentration: cap of the prior's a + b (>= min_concentration).
        draws: when > 0, the posterior also carries ``draws`` independent Beta draws per
            (request, candidate) as ``samples`` (draws, B, C): Thompson sampling then draws
            from the Beta rather than a clipped Gaussian. 0: no samples.
        generator: the NumPy generator of those draws (required when draws > 0).

    Returns:
        A :class:`~wager.prediction.Prediction` with (B, C) float64 CPU posterior mean
        ``a' / (a' + b')`` and std ``sqrt(a' b' / ((a' + b')**2 (a' + b' + 1)))`` (also its
        ``epistemic_std``), support (0, 1), method ``"<prior method>+beta_posterior"``.

    Raises:
        ValueError: no std, a mean outside [0, 1], counts of the wrong shape, negative, or
            clicks above impressions, bad bounds or draws (each named).
    """
    if not 0 < min_concentration <= max_concentration < math.inf:
        raise ValueError(
            "beta_posterior: need 0 < min_concentration <= max_concentration < inf, got "
            f"{min_concentration!r} and {max_concentration!r}"
        )
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 0:
        raise ValueError(f"beta_posterior: draws must be an integer >= 0, got {draws!r}")
    if draws > 0 and generator is None:
        raise ValueError("beta_posterior: draws > 0 needs a generator (np.random.Generator)")
    mean, std = _prior(prediction)
    n = _counts("impressions", impressions, mean.shape)
    c = _counts("clicks", clicks, mean.shape)
    if (c > n * (1 + 1e-9) + 1e-9).any():
        raise ValueError(
            "beta_posterior: clicks exceed impressions for some column; effective impressions "
            "count every click plus the examination probability of every non-click"
        )
    m = np.clip(mean, _MEAN_EPS, 1.0 - _MEAN_EPS)
    nu = prior_concentration(m, std, min_concentration, max_concentration)
    a = m * nu + c
    b = (1.0 - m) * nu + np.maximum(n - c, 0.0)
    total = a + b
    post_mean = a / total
    post_std = np.sqrt(a * b / (np.square(total) * (total + 1.0)))
    samples = None
    if draws > 0:
        assert generator is not None
        samples = torch.from_numpy(generator.beta(a, b, size=(draws, *a.shape)))
    std_t = torch.from_numpy(post_std)
    return Prediction(
        mean=torch.from_numpy(post_mean),
        std=std_t,
        epistemic_std=std_t,
        samples=samples,
        method=f"{prediction.method}+beta_posterior",
        support=(0.0, 1.0),
    )
