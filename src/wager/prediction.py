"""Prediction: the one output type of every wager model and uncertainty estimator.

A :class:`Prediction` carries a mean and, for uncertainty-aware estimators, a total
predictive std split into aleatoric (data noise, from a likelihood head) and epistemic
(model uncertainty, from ensemble / MC-dropout spread) parts. Total variance follows the
law of total variance: mean of the members' aleatoric variances + variance of their means.

A deterministic model returns ``std=None`` — never a fake zero.

:class:`MixturePrediction` is a Prediction that also carries Gaussian-mixture components
(mixture density heads); its quantiles, intervals and samples come from the mixture itself.

Example:
    >>> import torch
    >>> p = Prediction(mean=torch.tensor([0.2]), std=torch.tensor([0.1]), support=(0.0, 1.0))
    >>> iv = p.interval(0.9)
    >>> round(float(iv.low[0]), 4), round(float(iv.high[0]), 4)
    (0.0355, 0.3645)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import torch
from scipy.stats import t as student_t
from torch import Tensor


def _check_probability(name: str, value: float) -> None:
    """ValueError naming ``name`` unless ``value`` is a number in (0, 1) (NaN is not)."""
    try:
        ok = 0.0 < value < 1.0
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")


def _check_level(confidence_level: float) -> None:
    _check_probability("confidence_level", confidence_level)


@dataclass(frozen=True)
class Interval:
    """A two-sided prediction interval.

    Attributes:
        low: (...) lower bounds, same shape as the prediction's mean.
        high: (...) upper bounds.
        confidence_level: nominal probability that the target lies inside, e.g. 0.9.
    """

    low: Tensor
    high: Tensor
    confidence_level: float

    @property
    def width(self) -> Tensor:
        """(...) high - low."""
        return self.high - self.low

    def contains(self, target: Tensor) -> Tensor:
        """(...) bool: low <= target <= high."""
        return (target >= self.low) & (target <= self.high)


@dataclass(frozen=True)
class Prediction:
    """Mean and uncertainty of a batch of predictions.

    Attributes:
        mean: (...) expected rating / CTR / relevance.
        std: (...) total predictive std, or None for a deterministic model.
        aleatoric_std: (...) data-noise part, from the likelihood head, or None.
        epistemic_std: (...) model-uncertainty part (member/sample spread), or None.
        samples: (S, ...) draws of the predicted quantity when the estimator is
            sample-based (ensemble members, dropout samples), or None.
        method: provenance, e.g. "ensemble(members=5)".
        support: (low, high) range the predicted quantity lives in (e.g. (0, 1) for a
            CTR, (1, 5) for a rating); intervals are clipped to it. None = unbounded.
        df: degrees of freedom of a Student-t predictive distribution, set by
            :meth:`from_members` when the whole spread is the population std of M >= 3
            equally weighted draws (df = M - 1; see :meth:`student_t`); None = Gaussian
            N(mean, std^2). A step that refits the std as a Gaussian one (variance scaling,
            the local variance model) clears it.
    """

    mean: Tensor
    std: Tensor | None = None
    aleatoric_std: Tensor | None = None
    epistemic_std: Tensor | None = None
    samples: Tensor | None = None
    method: str = ""
    support: tuple[float, float] | None = None
    df: float | None = None

    def __post_init__(self) -> None:
        for name in ("std", "aleatoric_std", "epistemic_std"):
            value = getattr(self, name)
            if value is not None and value.shape != self.mean.shape:
                raise ValueError(
                    f"Prediction.{name} has shape {tuple(value.shape)}, "
                    f"expected the mean's shape {tuple(self.mean.shape)}"
                )
        if self.samples is not None and self.samples.shape[1:] != self.mean.shape:
            raise ValueError(
                f"Prediction.samples has shape {tuple(self.samples.shape)}, expected "
                f"(S, {', '.join(map(str, self.mean.shape))})"
            )
        if self.df is not None and (self.std is None or not self.df > 0):
            raise ValueError(
                f"Prediction.df = {self.df!r} needs a std and df > 0 (the Student-t's degrees "
                "of freedom); leave df None for a Gaussian predictive distribution"
            )

    @classmethod
    def from_members(
        cls,
        member_means: Tensor,
        member_aleatoric_std: Tensor | None = None,
        *,
        method: str = "",
        support: tuple[float, float] | None = None,
        population_var: Tensor | None = None,
    ) -> Prediction:
        """Combine M members by the law of total variance.

        Args:
            member_means: (M, ...) each member's predicted mean.
            member_aleatoric_std: (M, ...) each member's head std, or None when the
                members predict a mean only (then std = epistemic std).
            method: provenance string.
            support: range of the predicted quantity.
            population_var: (...) variance of each member's mean over the values an
                unknown (OOV) input may take, averaged over the members (0 for known
                inputs; see :mod:`wager.uncertainty.cold_start`), or None. It is part of the
                epistemic variance: not knowing the user is not knowing the model's input.

        Returns:
            mean = average of member means; epistemic variance = (population) variance of
            member means + population_var; aleatoric variance = average of member
            variances; std = sqrt(epistemic variance + aleatoric variance). ``samples`` =
            member means. ``df`` = M - 1 when the std is a spread over draws alone (the
            members' and the population's; no head std) and M >= 3: the Student-t of one
            more draw (with 2 draws its df of 1 has no finite mean, so the Gaussian stands in).
        """
        if member_means.ndim < 1 or member_means.shape[0] < 2:
            raise ValueError("from_members needs at least 2 members along dimension 0")
        mean = member_means.mean(dim=0)
        # two-pass form: E[x^2] - E[x]^2 cancels catastrophically in float32 (ratings near
        # 4 with a member spread of 0.05 lose 3-4 of its digits to rounding)
        epi_var = (member_means - mean).square().mean(dim=0)
        if population_var is not None:
            epi_var = epi_var + population_var.to(epi_var.dtype)
        epistemic = epi_var.sqrt()
        aleatoric = None
        total_var = epi_var
        if member_aleatoric_std is not None:
            ale_var = member_aleatoric_std.square().mean(dim=0)
            aleatoric = ale_var.sqrt()
            total_var = total_var + ale_var
        m = int(member_means.shape[0])
        # the population variance of cold-start rows is a spread over draws too (and 0 for
        # known rows), so it keeps the t; a head std does not come from the draws
        draws_only = aleatoric is None and m >= 3
        return cls(
            mean=mean,
            std=total_var.sqrt(),
            aleatoric_std=aleatoric,
            epistemic_std=epistemic,
            samples=member_means,
            method=method,
            support=support,
            df=float(m - 1) if draws_only else None,
        )

    def _require_std(self, what: str) -> Tensor:
        if self.std is None:
            raise ValueError(
                f"{what} needs an uncertainty estimate, but this prediction is deterministic "
                f"(method={self.method!r}); wrap the model in an Ensemble or MCDropout"
            )
        return self.std

    def _clip(self, x: Tensor) -> Tensor:
        if self.support is None:
            return x
        return x.clamp(self.support[0], self.support[1])

    def student_t(self) -> tuple[float, Tensor] | None:
        """(df, scale) of the Student-t predictive distribution, or None when it is Gaussian.

        Set (``df``) when the whole spread is the population std of M equally weighted
        draws (ensemble members or dropout samples without a noise head): one more draw
        follows a Student-t with df = M - 1, location ``mean`` and scale
        ``std * sqrt((M + 1) / (M - 1)) = std * sqrt((df + 2) / df)``. :meth:`quantile`, the
        evaluation's NLL / CRPS and the relevance probability all use this distribution;
        otherwise N(mean, std^2).
        """
        if self.df is None:
            return None
        assert self.std is not None
        return self.df, self.std * math.sqrt((self.df + 2.0) / self.df)

    def quantile(self, q: float) -> Tensor:
        """(...) the q-quantile of the predictive distribution, clipped to the support.

        Gaussian with this mean and std, except for a prediction whose whole spread comes
        from M samples (ensemble members or dropout samples without a noise head; ``df``
        set, see :meth:`student_t`). Then the M samples are M draws from the distribution
        of the predicted quantity, and the quantile is that of the Student-t prediction
        distribution of one more draw, ``mean + t_{M-1}(q) * std * sqrt((M + 1) / (M - 1))``
        (std is the population std of the draws). With 5 members the Gaussian 90% interval
        would hold only ~75% of such draws; the t interval holds 90% when the draws are
        normal, and tends to the Gaussian one as M grows.
        """
        _check_probability("quantile q", q)
        std = self._require_std("quantile()")
        t = self.student_t()
        if t is None:
            return self._clip(self.mean + NormalDist().inv_cdf(q) * std)
        df, scale = t
        return self._clip(self.mean + float(student_t.ppf(q, df)) * scale)

    def interval(self, confidence_level: float = 0.9) -> Interval:
        """Central interval holding ``confidence_level`` of the predictive distribution."""
        _check_level(confidence_level)
        tail = (1.0 - confidence_level) / 2.0
        return Interval(
            low=self.quantile(tail),
            high=self.quantile(1.0 - tail),
            confidence_level=confidence_level,
        )

    def ucb(self, beta: float) -> Tensor:
        """(...) mean + beta * std: the optimistic score UCB ranks by.

        Args:
            beta: exploration weight in stds, a finite number (negative = pessimistic).
        """
        try:
            finite = math.isfinite(beta)
        except TypeError:
            finite = False
        if isinstance(beta, bool) or not finite:
            raise ValueError(f"ucb beta must be a finite number, got {beta!r}")
        return self.mean + beta * self._require_std("ucb()")

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """(...) one draw: a random member/sample when sample-based, else Gaussian."""
        if self.samples is not None:
            s = self.samples.shape[0]
            idx = torch.randint(s, self.mean.shape, generator=generator, device=self.mean.device)
            return self.samples.gather(0, idx.unsqueeze(0)).squeeze(0)
        std = self._require_std("sample()")
        noise = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self._clip(self.mean + std * noise)

    def _selected(self, index: Any) -> dict[str, Any]:
        """The Prediction fields of ``self[index]`` (batch dimensions indexed)."""

        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[index]

        return {
            "mean": self.mean[index],
            "std": pick(self.std),
            "aleatoric_std": pick(self.aleatoric_std),
            "epistemic_std": pick(self.epistemic_std),
            "samples": None if self.samples is None else self.samples[(slice(None), index)],
            "method": self.method,
            "support": self.support,
            "df": self.df,
        }

    def __getitem__(self, index: Any) -> Prediction:
        """Select predictions (indexing applies to the batch dimensions)."""
        return Prediction(**self._selected(index))

    def to_dict(self, confidence_level: float = 0.9) -> dict[str, Any]:
        """JSON-ready form (the serving schema): lists of floats, interval when std exists."""

        def lst(t: Tensor | None) -> list[float] | None:
            return None if t is None else t.detach().cpu().reshape(-1).tolist()

        out: dict[str, Any] = {
            "method": self.method,
            "mean": lst(self.mean),
            "std": lst(self.std),
            "aleatoric_std": lst(self.aleatoric_std),
            "epistemic_std": lst(self.epistemic_std),
        }
        if self.std is not None:
            iv = self.interval(confidence_level)
            out["interval"] = {
                "confidence_level": confidence_level,
                "low": lst(iv.low),
                "high": lst(iv.high),
            }
        return out


_QUANTILE_TOL = 1e-6  # bisection accuracy of MixturePrediction.quantile, in the quantity's units
_BRACKET_STDS = 10.0  # the quantile search brackets [min(mu - 10 s), max(mu + 10 s)]
_WEIGHT_SUM_ATOL = 1e-4  # how far from 1 the mixture weights of an element may sum


def _check_components(
    weights: Tensor, means: Tensor, stds: Tensor, batch_shape: torch.Size | None = None
) -> None:
    """Shape checks shared by the constructor and :meth:`MixturePrediction.from_components`."""
    for name, value in (("weights", weights), ("means", means), ("stds", stds)):
        if not isinstance(value, Tensor) or value.ndim < 1 or value.shape[-1] < 1:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"MixturePrediction.{name} must be a tensor of shape (..., K) with K >= 1 "
                f"components, got {shape}"
            )
    if means.shape != weights.shape:
        raise ValueError(
            f"MixturePrediction.means has shape {tuple(means.shape)}, expected the weights' "
            f"shape {tuple(weights.shape)} (one mean per component)"
        )
    if stds.shape != weights.shape:
        raise ValueError(
            f"MixturePrediction.stds has shape {tuple(stds.shape)}, expected the weights' "
            f"shape {tuple(weights.shape)} (one std per component)"
        )
    if batch_shape is not None and weights.shape[:-1] != batch_shape:
        raise ValueError(
            f"MixturePrediction.weights has shape {tuple(weights.shape)}, expected "
            f"(*mean.shape, K) = ({', '.join(map(str, (*batch_shape, 'K')))})"
        )


@dataclass(frozen=True, kw_only=True)
class MixturePrediction(Prediction):
    """A predictive distribution that is a Gaussian mixture per element (MDN / DDN heads).

    It is a :class:`Prediction` (``mean``, ``std``, ``aleatoric_std``, ``epistemic_std``
    keep their meaning, so every consumer of Prediction accepts it) that also carries the
    mixture components, from which quantiles, intervals, samples, the CDF and the density
    are derived exactly rather than from a Gaussian approximation. Build it with
    :meth:`from_components`, which derives ``mean`` and ``std`` from the components; the
    components are the whole predictive distribution (pool an ensemble's members into one
    mixture with weights ``w / M``).

    The components live on the real line. ``support`` clips the mean, quantiles, intervals
    and samples (as for :class:`Prediction`); ``std`` is that of the unclipped mixture.
    ``__getitem__`` indexes the batch dimensions only (no ``Ellipsis``).

    Attributes:
        weights: (..., K) mixture weights, >= 0, summing to 1 over the last dimension.
        means: (..., K) component means, in the predicted quantity's units.
        stds: (..., K) component standard deviations, > 0, same units.
        measurement_std: (...) std of the measurement noise of an observed CTR around the
            predicted (clean) one, reported separately by the deep density network when the
            impressions are known; it is not part of ``std``, quantiles or samples. None
            otherwise.

    Example:
        >>> import torch
        >>> p = MixturePrediction.from_components(
        ...     torch.tensor([[0.5, 0.5]]), torch.tensor([[-1.0, 1.0]]), torch.tensor([[1.0, 1.0]])
        ... )
        >>> p.mean, p.std  # variance = 0.5 (1 + 1) + 0.5 (1 + 1) - 0 = 2
        (tensor([0.]), tensor([1.4142]))
        >>> round(float(p.quantile(0.9)[0]), 5), round(float(p.cdf(torch.tensor([0.0]))[0]), 6)
        (1.84947, 0.5)
    """

    weights: Tensor
    means: Tensor
    stds: Tensor
    measurement_std: Tensor | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_components(self.weights, self.means, self.stds, self.mean.shape)
        if not bool((self.stds > 0).all()):
            raise ValueError(
                "MixturePrediction.stds must be > 0 everywhere, got a minimum of "
                f"{float(self.stds.min())}; floor the head's std (e.g. min_std=1e-3)"
            )
        if not bool((self.weights >= 0).all()):
            raise ValueError(
                "MixturePrediction.weights must be >= 0, got a minimum of "
                f"{float(self.weights.min())}; map raw logits through a softmax"
            )
        total = self.weights.sum(dim=-1)
        if total.numel() > 0 and not bool(((total - 1.0).abs() <= _WEIGHT_SUM_ATOL).all()):
            worst = float(total.flatten()[(total - 1.0).abs().argmax()])
            raise ValueError(
                "MixturePrediction.weights must sum to 1 over the last (component) dimension, "
                f"found a sum of {worst}; normalise them (softmax of the logits)"
            )
        if self.measurement_std is not None:
            if self.measurement_std.shape != self.mean.shape:
                raise ValueError(
                    "MixturePrediction.measurement_std has shape "
                    f"{tuple(self.measurement_std.shape)}, expected the mean's shape "
                    f"{tuple(self.mean.shape)}"
                )
            if not bool((self.measurement_std >= 0).all()):
                raise ValueError("MixturePrediction.measurement_std must be >= 0")

    @classmethod
    def from_components(
        cls,
        weights: Tensor,
        means: Tensor,
        stds: Tensor,
        *,
        method: str = "",
        support: tuple[float, float] | None = None,
        measurement_std: Tensor | None = None,
        epistemic_std: Tensor | None = None,
        samples: Tensor | None = None,
    ) -> MixturePrediction:
        """Build a mixture prediction, deriving its mean and std from the components.

        Args:
            weights: (..., K) mixture weights (>= 0, summing to 1 over K).
            means: (..., K) component means.
            stds: (..., K) component stds, > 0.
            method: provenance string, e.g. "mdn(components=3)".
            support: (low, high) range of the predicted quantity, or None.
            measurement_std: (...) measurement-noise std (deep density network), or None.
            epistemic_std: (...) model-uncertainty part already contained in the mixture
                (e.g. the spread of pooled ensemble members' means), or None.
            samples: (S, ...) the pooled members' means (epistemic draws of the mean, as
                :meth:`Prediction.from_members` keeps them), or None.

        Returns:
            mean = sum_k w_k mu_k (clamped into ``support`` when set);
            std = sqrt(sum_k w_k (s_k^2 + (mu_k - mean)^2)), the mixture's std (equal to
            sqrt(sum_k w_k (s_k^2 + mu_k^2) - mean^2)); aleatoric_std = std when
            ``epistemic_std`` is None, else sqrt(max(std^2 - epistemic_std^2, 0)) (law of
            total variance: the mixture already holds both parts).
        """
        _check_components(weights, means, stds)
        mean = (weights * means).sum(dim=-1)
        var = (weights * (stds.square() + (means - mean.unsqueeze(-1)).square())).sum(dim=-1)
        std = var.clamp_min(0.0).sqrt()
        if epistemic_std is None:
            aleatoric = std
        else:
            aleatoric = (var - epistemic_std.square()).clamp_min(0.0).sqrt()
        if support is not None:
            mean = mean.clamp(float(support[0]), float(support[1]))
        return cls(
            mean=mean,
            std=std,
            aleatoric_std=aleatoric,
            epistemic_std=epistemic_std,
            method=method,
            support=support,
            weights=weights,
            means=means,
            stds=stds,
            measurement_std=measurement_std,
            samples=samples,
        )

    @classmethod
    def from_members(  # type: ignore[override]  # pools mixtures: not Prediction's inputs
        cls,
        weights: Tensor,
        means: Tensor,
        stds: Tensor,
        *,
        method: str = "",
        support: tuple[float, float] | None = None,
    ) -> MixturePrediction:
        """Pool R members' K-component mixtures into one mixture of R K components.

        Args:
            weights, means, stds: (R, B, K) each member's mixture per row.
            method: provenance string.
            support: range of the predicted quantity.

        Returns:
            (B,) mixture whose components are member-major (member r at r K .. r K + K - 1),
            member weights divided by R; ``epistemic_std`` = the population std of the
            members' means and ``samples`` = those means (both None for R = 1).
        """
        r, b, k = weights.shape

        def pooled(x: Tensor) -> Tensor:  # (R, B, K) -> (B, R K), member-major
            return x.permute(1, 0, 2).reshape(b, r * k)

        member_means = (weights * means).sum(dim=-1)  # (R, B)
        return cls.from_components(
            pooled(weights / r),
            pooled(means),
            pooled(stds),
            method=method,
            support=support,
            epistemic_std=member_means.std(dim=0, correction=0) if r >= 2 else None,
            samples=member_means if r >= 2 else None,
        )

    @property
    def components(self) -> int:
        """K, the number of mixture components."""
        return int(self.weights.shape[-1])

    def cdf(self, x: Tensor | float) -> Tensor:
        """Mixture CDF ``sum_k w_k Phi((x - mu_k) / s_k)`` of the unclipped mixture.

        Args:
            x: (...) values (or a float), broadcastable to the mean's shape.

        Returns:
            (...) probabilities, the broadcast shape of ``x`` and the mean.
        """
        x = torch.as_tensor(x, dtype=self.means.dtype, device=self.means.device)
        z = (x.unsqueeze(-1) - self.means) / self.stds
        return (self.weights * torch.special.ndtr(z)).sum(dim=-1)

    def log_prob(self, x: Tensor | float) -> Tensor:
        """Log-density of the unclipped mixture, ``logsumexp_k(log w_k + log N(x; mu_k, s_k))``.

        Args:
            x: (...) values (or a float), broadcastable to the mean's shape.

        Returns:
            (...) log-densities in nats (per unit of the quantity).
        """
        x = torch.as_tensor(x, dtype=self.means.dtype, device=self.means.device)
        z = (x.unsqueeze(-1) - self.means) / self.stds
        log_pdf = -0.5 * z.square() - torch.log(self.stds) - 0.5 * math.log(2.0 * math.pi)
        return torch.logsumexp(torch.log(self.weights) + log_pdf, dim=-1)

    def _quantiles(self, qs: list[float]) -> list[Tensor]:
        """Quantiles by vectorised bisection on the mixture CDF (float64), clipped."""
        for q in qs:
            _check_probability("quantile q", q)
        w = self.weights.detach().double()
        mu = self.means.detach().double()
        s = self.stds.detach().double()
        target = torch.tensor(qs, dtype=torch.float64, device=mu.device)
        target = target.view(-1, *([1] * (mu.ndim - 1)))  # (Q, 1, ..., 1)
        lo = (mu - _BRACKET_STDS * s).amin(dim=-1).expand(len(qs), *mu.shape[:-1])
        hi = (mu + _BRACKET_STDS * s).amax(dim=-1).expand(len(qs), *mu.shape[:-1])
        # every element's bracket shrinks by half per step: after n steps the midpoint is
        # within width / 2^(n+1) <= _QUANTILE_TOL of the root
        width = float((hi - lo).max()) if lo.numel() > 0 else 0.0
        steps = max(0, math.ceil(math.log2(width / _QUANTILE_TOL))) if width > 0 else 0
        for _ in range(steps):
            mid = 0.5 * (lo + hi)
            below = (w * torch.special.ndtr((mid.unsqueeze(-1) - mu) / s)).sum(-1) < target
            lo = torch.where(below, mid, lo)
            hi = torch.where(below, hi, mid)
        out = (0.5 * (lo + hi)).to(self.means.dtype)
        return [self._clip(out[i]) for i in range(len(qs))]

    def quantile(self, q: float) -> Tensor:
        """(...) the q-quantile of the mixture, clipped to the support.

        Found by bisection on the mixture CDF between min_k(mu_k - 10 s_k) and
        max_k(mu_k + 10 s_k), to within 1e-6 in the quantity's units (computed in float64,
        returned in the components' dtype). Monotone in ``q``.
        """
        return self._quantiles([q])[0]

    def interval(self, confidence_level: float = 0.9) -> Interval:
        """Central interval between the mixture's (1 - level)/2 and (1 + level)/2 quantiles."""
        _check_level(confidence_level)
        tail = (1.0 - confidence_level) / 2.0
        low, high = self._quantiles([tail, 1.0 - tail])
        return Interval(low=low, high=high, confidence_level=confidence_level)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """(...) one draw per element: a component by weight, then its Gaussian, clipped."""
        u = torch.rand(
            self.mean.shape, generator=generator, device=self.means.device, dtype=self.means.dtype
        )
        cum = self.weights.cumsum(dim=-1)
        idx = (cum < u.unsqueeze(-1)).sum(dim=-1).clamp_max(self.components - 1).unsqueeze(-1)
        mu = self.means.gather(-1, idx).squeeze(-1)
        s = self.stds.gather(-1, idx).squeeze(-1)
        noise = torch.randn(
            self.mean.shape, generator=generator, device=self.means.device, dtype=self.means.dtype
        )
        return self._clip(mu + s * noise)

    def __getitem__(self, index: Any) -> MixturePrediction:
        """Select predictions (indexing applies to the batch dimensions; no ``Ellipsis``)."""
        measurement = self.measurement_std
        return MixturePrediction(
            **self._selected(index),
            weights=self.weights[index],
            means=self.means[index],
            stds=self.stds[index],
            measurement_std=None if measurement is None else measurement[index],
        )

    def to_dict(self, confidence_level: float = 0.9) -> dict[str, Any]:
        """Prediction's JSON form plus ``components`` and ``measurement_std``.

        ``components`` holds ``weights``, ``means`` and ``stds`` as lists (one per element,
        batch dimensions flattened) of K floats; ``measurement_std`` is a flat list or None.
        """
        out = super().to_dict(confidence_level)
        k = self.components

        def rows(t: Tensor) -> list[list[float]]:
            return t.detach().cpu().reshape(-1, k).tolist()

        out["components"] = {
            "weights": rows(self.weights),
            "means": rows(self.means),
            "stds": rows(self.stds),
        }
        ms = self.measurement_std
        out["measurement_std"] = None if ms is None else ms.detach().cpu().reshape(-1).tolist()
        return out
