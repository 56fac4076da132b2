"""Checks and slate arithmetic every policy shares (not public: use the policy classes).

All policy arithmetic runs on the CPU in float64: a prediction over (B, C) candidates is
small, and the random generator of a :class:`~wager.policies.base.PolicyState` is a CPU one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from wager.policies.base import Slate
from wager.prediction import MixturePrediction, Prediction

#: at most this many float64 values in one block of Monte Carlo draws (D x B x C [x K]):
#: 4M values = 32 MB; the draws are split into blocks of whole draws to stay under it
DRAW_BLOCK_VALUES = 4_000_000


def check_floor(value: float) -> None:
    """ValueError naming ``propensity_floor`` unless it is a number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ValueError(
            f"propensity_floor must be a number in [0, 1) (the smallest propensity a slate "
            f"reports), got {value!r}"
        )


def check_positive_int(name: str, value: int) -> None:
    """ValueError naming ``name`` unless ``value`` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def check_finite(name: str, value: float, low: float, high: float, allowed: str) -> None:
    """ValueError naming ``name`` unless ``value`` is a real number with low <= value <= high.

    Args:
        name: the parameter's name, as the user wrote it.
        value: the value to check.
        low, high: the inclusive bounds (use math.inf for none).
        allowed: the allowed range in words, e.g. "in [0, 1]".
    """
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and low <= value <= high
    )
    if not ok:
        raise ValueError(f"{name} must be a finite number {allowed}, got {value!r}")


def candidate_means(prediction: Prediction, k: int, policy: str) -> Tensor:
    """(B, C) float64 CPU means of a (B, C) prediction, after checking ``k`` and the shape.

    Raises:
        ValueError: the prediction is not 2-D, k is not an integer in [1, C], or a mean is
            NaN or infinite (the first such request row and candidate column are named).
    """
    mean = prediction.mean
    if mean.ndim != 2:
        raise ValueError(
            f"{policy}: the prediction must be (B, C) = (requests, candidates), got shape "
            f"{tuple(mean.shape)}"
        )
    c = int(mean.shape[1])
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{policy}: k must be an integer >= 1, got {k!r}")
    if k > c:
        raise ValueError(
            f"{policy}: k = {k} positions but only C = {c} candidates per request; ask for "
            f"k <= {c} or bring more candidates"
        )
    out = mean.detach().to("cpu", torch.float64)
    bad = ~torch.isfinite(out)
    if bool(bad.any()):
        row, col = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{policy}: the prediction's mean is {float(out[row, col])} at request row {row}, "
            f"candidate column {col} ({int(bad.sum())} NaN or infinite in all); every mean "
            "must be a finite number: drop or fix those candidates first"
        )
    return out


def candidate_stds(prediction: Prediction, policy: str) -> Tensor:
    """(B, C) float64 CPU stds, or a ValueError for a deterministic prediction."""
    if prediction.std is None:
        raise ValueError(
            f"{policy} needs an uncertainty estimate, but this prediction is deterministic "
            f"(std is None, method={prediction.method!r}): use Greedy(), or wrap the model in "
            "an ensemble or MC dropout"
        )
    std = prediction.std.detach().to("cpu", torch.float64)
    bad = ~torch.isfinite(std) | (std < 0)
    if bool(bad.any()):
        row, col = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{policy}: the prediction's std is {float(std[row, col])} at request row {row}, "
            f"candidate column {col}; every std must be a finite number >= 0"
        )
    return std


def ranked(scores: Tensor, k: int) -> Tensor:
    """(B, k) int64 the k best columns of (B, C) ``scores`` per row, best first; ties go to
    the lowest column (a stable sort)."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]


def one_hot(items: Tensor, c: int) -> Tensor:
    """(B, k, C) float64 distribution putting all mass on ``items`` (B, k)."""
    out = torch.zeros(*items.shape, c, dtype=torch.float64)
    return out.scatter_(-1, items.unsqueeze(-1), 1.0)


def floored(propensities: Tensor, floor: float) -> Tensor:
    """(B, k) propensities clamped into [floor, 1] (1 + rounding never exceeds 1)."""
    return propensities.clamp(min=floor, max=1.0)


def masked(scores: Tensor, taken: Tensor) -> Tensor:
    """``scores`` (..., C) with the ``taken`` (..., C) bool entries set to -inf."""
    return scores.masked_fill(taken, -math.inf)


def draw_blocks(draws: int, per_draw: int) -> list[int]:
    """Sizes of the blocks ``draws`` Monte Carlo draws are split into, so that one block
    holds at most :data:`DRAW_BLOCK_VALUES` values (``per_draw`` values a draw)."""
    size = max(1, DRAW_BLOCK_VALUES // max(1, per_draw))
    return [min(size, draws - start) for start in range(0, draws, size)]


def predictive_draws(prediction: Prediction, n: int, generator: torch.Generator) -> Tensor:
    """(n, B, C) float64 independent draws of every candidate's predicted quantity.

    Each draw follows :meth:`Prediction.sample`: a mixture prediction draws a component by
    weight and then its Gaussian; a sample-based one (ensemble members, dropout samples)
    takes a uniformly random member per candidate; otherwise N(mean, std^2). Mixture and
    Gaussian draws are clipped to the prediction's support.

    Args:
        prediction: (B, C) prediction with a std (checked by the caller).
        n: draws per candidate.
        generator: the CPU generator every random number comes from.
    """
    b, c = prediction.mean.shape
    if isinstance(prediction, MixturePrediction):
        w = prediction.weights.detach().to("cpu", torch.float64)
        mu = prediction.means.detach().to("cpu", torch.float64)
        s = prediction.stds.detach().to("cpu", torch.float64)
        u = torch.rand((n, b, c, 1), generator=generator, dtype=torch.float64)
        idx = (w.cumsum(-1) < u).sum(-1).clamp_max(w.shape[-1] - 1)  # (n, B, C)
        flat = torch.arange(b * c).expand(n, -1)
        picked_mu = mu.reshape(b * c, -1)[flat, idx.reshape(n, -1)].reshape(n, b, c)
        picked_s = s.reshape(b * c, -1)[flat, idx.reshape(n, -1)].reshape(n, b, c)
        noise = torch.randn((n, b, c), generator=generator, dtype=torch.float64)
        return _clip(picked_mu + picked_s * noise, prediction.support)
    if prediction.samples is not None:
        samples = prediction.samples.detach().to("cpu", torch.float64).reshape(-1, b * c)
        idx = torch.randint(samples.shape[0], (n, b * c), generator=generator)
        return samples[idx, torch.arange(b * c)].reshape(n, b, c)
    assert prediction.std is not None
    mean = prediction.mean.detach().to("cpu", torch.float64)
    std = prediction.std.detach().to("cpu", torch.float64)
    noise = torch.randn((n, b, c), generator=generator, dtype=torch.float64)
    return _clip(mean + std * noise, prediction.support)


def _clip(x: Tensor, support: tuple[float, float] | None) -> Tensor:
    return x if support is None else x.clamp(float(support[0]), float(support[1]))


def draw_values_per_candidate(prediction: Prediction) -> int:
    """Values one draw of every candidate holds while it is made (x K for a mixture)."""
    per = int(prediction.mean.numel())
    if isinstance(prediction, MixturePrediction):
        per *= prediction.components
    return per


#: one position of a sequential slate: (position j, (B, C) bool already taken) ->
#: ((B, C) float64 conditional distribution of the position, (B,) int64 chosen column)
PositionStep = Callable[[int, Tensor], tuple[Tensor, Tensor]]


def sequential_slate(
    step: PositionStep,
    shape: tuple[int, int],
    k: int,
    floor: float,
    name: str,
    draws: int | None = None,
) -> Slate:
    """Fill k positions of B requests over C candidates, one ``step`` per position, without
    repeats; the propensity of each choice is its probability under the position's
    conditional distribution (floored at ``floor``)."""
    b, c = shape
    rows = torch.arange(b)
    taken = torch.zeros((b, c), dtype=torch.bool)
    items = torch.empty((b, k), dtype=torch.int64)
    props = torch.empty((b, k), dtype=torch.float64)
    dist = torch.empty((b, k, c), dtype=torch.float64)
    for j in range(k):
        cond, chosen = step(j, taken)
        dist[:, j] = cond
        props[:, j] = cond[rows, chosen]
        items[:, j] = chosen
        taken[rows, chosen] = True
    return Slate(
        items=items,
        propensities=floored(props, floor),
        distribution=dist,
        propensity_floor=floor,
        draws=draws,
        policy=name,
    )
