"""Output heads: the head decides the likelihood and what the prediction's mean means.

Every head is a stateless, immutable object (no parameters; the model emits the raw
outputs) with one duck-typed interface, :class:`Head`:

- ``out_dim``: raw outputs per example; 1 means the model outputs (B,), k > 1 means (B, k).
- ``support``: (low, high) range of the predicted quantity, or None when unbounded.
- ``loss(outputs, labels, weights=None)``: scalar weighted mean ``sum(w * l) / sum(w)``.
- ``mean(outputs)``: (B,) expected value of the label.
- ``aleatoric_std(outputs)``: (B,) data-noise std, or None for point heads.

Mixture heads (:class:`MixtureDensityHead`, :class:`DeepDensityHead`) add
``mixture_components(outputs)`` (weights, means, stds) and ``prediction(outputs)`` ->
:class:`~wager.prediction.MixturePrediction`; the deep density head's ``loss`` also needs
the keyword ``impressions``.

``mean`` and ``aleatoric_std`` accept any leading shape (e.g. (M, B) or (M, B, 2) outputs of
M ensemble members); the last dimension is the head's output dimension when ``out_dim > 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from wager.models.losses import gaussian_nll, weighted_mean
from wager.prediction import MixturePrediction


class Head(Protocol):
    """What every output head provides (see the module docstring)."""

    @property
    def out_dim(self) -> int:
        """Raw outputs per example (1: the model outputs (B,))."""
        ...

    @property
    def support(self) -> tuple[float, float] | None:
        """(low, high) range of the predicted quantity, or None."""
        ...

    def loss(self, outputs: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
        """Scalar weighted mean loss."""
        ...

    def mean(self, outputs: Tensor) -> Tensor:
        """(B,) predicted mean."""
        ...

    def aleatoric_std(self, outputs: Tensor) -> Tensor | None:
        """(B,) data-noise std, or None."""
        ...


def _check_support(support: tuple[float, float] | None) -> None:
    if support is not None and not float(support[0]) < float(support[1]):
        raise ValueError(
            f"support must be (low, high) with low < high, got {support!r}; "
            "pass the rating range, e.g. support=(1.0, 5.0), or None for no clipping"
        )


@dataclass(frozen=True)
class BernoulliHead:
    """Click likelihood on logits: the mean is the click probability sigmoid(logit).

    Example:
        >>> head = BernoulliHead()
        >>> head.mean(torch.tensor([0.0])), head.aleatoric_std(torch.tensor([0.0]))
        (tensor([0.5000]), tensor([0.5000]))
    """

    out_dim: ClassVar[int] = 1
    support: ClassVar[tuple[float, float] | None] = (0.0, 1.0)

    def loss(self, logits: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
        """Weighted mean binary cross-entropy.

        Args:
            logits: (B,) logits.
            labels: (B,) 0/1 clicks (floats in [0, 1] are allowed: soft labels / CTRs).
            weights: (B,) non-negative sample weights, or None for all ones.

        Returns:
            scalar: sum(w * bce) / max(sum(w), eps).
        """
        bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        return weighted_mean(bce, weights)

    def mean(self, logits: Tensor) -> Tensor:
        """(B,) click probabilities."""
        return torch.sigmoid(logits)

    def aleatoric_std(self, logits: Tensor) -> Tensor:
        """(B,) Bernoulli std sqrt(p (1 - p)) of a single click."""
        p = torch.sigmoid(logits)
        return torch.sqrt(p * (1.0 - p))


@dataclass(frozen=True)
class PointHead:
    """Squared-error regression (a point prediction without a noise model).

    Args:
        support: (low, high) label range (e.g. (1.0, 5.0) for star ratings) used only to
            clip the predicted mean; the loss always sees the raw output. None: no clipping.

    Example:
        >>> head = PointHead(support=(1.0, 5.0))
        >>> head.mean(torch.tensor([0.2, 3.0, 7.0]))
        tensor([1., 3., 5.])
    """

    support: tuple[float, float] | None = None
    out_dim: ClassVar[int] = 1

    def __post_init__(self) -> None:
        _check_support(self.support)

    def loss(self, outputs: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
        """Weighted mean squared error.

        Args:
            outputs: (B,) predictions (unclipped).
            labels: (B,) targets.
            weights: (B,) non-negative sample weights, or None for all ones.

        Returns:
            scalar: sum(w * (outputs - labels)^2) / max(sum(w), eps).
        """
        return weighted_mean((outputs - labels).square(), weights)

    def mean(self, outputs: Tensor) -> Tensor:
        """(B,) predictions, clipped to ``support`` when it is set."""
        if self.support is None:
            return outputs
        return outputs.clamp(float(self.support[0]), float(self.support[1]))

    def aleatoric_std(self, outputs: Tensor) -> None:
        """None: a point head has no noise model."""
        return None


@dataclass(frozen=True)
class GaussianHead:
    """Heteroscedastic Gaussian likelihood: per-example mean and std.

    The model emits (B, 2) outputs: column 0 the mean, column 1 a raw scale ``r`` mapped to
    ``std = softplus(r) + min_std``.

    Args:
        min_std: floor of the std (label units), keeps the likelihood bounded.
        support: (low, high) label range used only to clip the predicted mean, or None.
        mean_loss: how the mean is fitted. "nll": the joint Gaussian NLL (the classic
            heteroscedastic regression; its mean gradient is divided by the predicted
            variance, which slows and biases the mean where the noise is high). "mse":
            the mean is fitted by squared error exactly as a point model, and the std by
            the NLL of the residuals with the mean held fixed
            (``(mu - y)^2 + nll(stop_grad(mu), std, y)``), so the mean is as accurate as
            the point model's and the std is a pure noise model on top of it.

    Example:
        >>> head = GaussianHead(min_std=0.0)
        >>> out = torch.tensor([[3.0, 0.0]])
        >>> head.mean(out), head.aleatoric_std(out)
        (tensor([3.]), tensor([0.6931]))
    """

    min_std: float = 0.01
    support: tuple[float, float] | None = None
    mean_loss: Literal["nll", "mse"] = "nll"
    out_dim: ClassVar[int] = 2

    def __post_init__(self) -> None:
        if self.mean_loss not in ("nll", "mse"):
            raise ValueError(
                f"mean_loss must be 'nll' or 'mse', got {self.mean_loss!r}; 'mse' fits the "
                "mean by squared error and the std by the NLL of the residuals"
            )
        if not self.min_std >= 0.0:
            raise ValueError(
                f"min_std must be >= 0, got {self.min_std!r}; a small positive floor such "
                "as 0.01 (in label units) keeps the Gaussian likelihood bounded"
            )
        _check_support(self.support)

    def _std(self, outputs: Tensor) -> Tensor:
        return F.softplus(outputs[..., 1]) + self.min_std

    def loss(self, outputs: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
        """Weighted mean Gaussian negative log-likelihood (nats, 0.5 log 2π included).

        Args:
            outputs: (B, 2) (mean, raw scale).
            labels: (B,) targets.
            weights: (B,) non-negative sample weights, or None for all ones.

        Returns:
            scalar: sum(w * nll) / max(sum(w), eps) with ``mean_loss="nll"``; with
            ``mean_loss="mse"`` sum(w * ((mu - y)^2 + nll(stop_grad(mu), std, y))) / sum(w).
        """
        mu, std = outputs[..., 0], self._std(outputs)
        if self.mean_loss == "nll":
            return weighted_mean(gaussian_nll(mu, std, labels), weights)
        per_row = (mu - labels).square() + gaussian_nll(mu.detach(), std, labels)
        return weighted_mean(per_row, weights)

    def mean(self, outputs: Tensor) -> Tensor:
        """(B,) predicted means, clipped to ``support`` when it is set."""
        mu = outputs[..., 0]
        if self.support is None:
            return mu
        return mu.clamp(float(self.support[0]), float(self.support[1]))

    def aleatoric_std(self, outputs: Tensor) -> Tensor:
        """(B,) predicted std ``softplus(raw) + min_std``."""
        return self._std(outputs)


_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _check_components_and_floor(components: int, min_std: float) -> None:
    if isinstance(components, bool) or not isinstance(components, int) or components < 1:
        raise ValueError(
            f"components must be an integer >= 1, got {components!r}; 3 to 5 mixture "
            "components are a common choice"
        )
    if not min_std >= 0.0:
        raise ValueError(
            f"min_std must be >= 0, got {min_std!r}; a small positive floor such as 1e-3 "
            "(in label units) keeps the mixture likelihood bounded"
        )


def _split_mixture(
    outputs: Tensor, components: int, min_std: float
) -> tuple[Tensor, Tensor, Tensor]:
    """(..., 3K) raw outputs -> log-weights, means, stds, each (..., K)."""
    if outputs.shape[-1] != 3 * components:
        raise ValueError(
            f"outputs must have last dimension 3 * components = {3 * components} "
            f"(logits, means, raw scales), got shape {tuple(outputs.shape)}; set the "
            "model's output size to the head's out_dim"
        )
    k = components
    log_w = torch.log_softmax(outputs[..., :k], dim=-1)
    means = outputs[..., k : 2 * k]
    stds = F.softplus(outputs[..., 2 * k :]) + min_std
    return log_w, means, stds


def _mixture_moments(weights: Tensor, means: Tensor, stds: Tensor) -> tuple[Tensor, Tensor]:
    """(..., K) components -> (...) mixture mean and (...) mixture std."""
    mean = (weights * means).sum(dim=-1)
    var = (weights * (stds.square() + (means - mean.unsqueeze(-1)).square())).sum(dim=-1)
    return mean, var.clamp_min(0.0).sqrt()


def _mixture_nll(log_w: Tensor, means: Tensor, var: Tensor, labels: Tensor) -> Tensor:
    """(...) -log sum_k w_k N(label; mu_k, var_k), computed with logsumexp (nats)."""
    y = labels.unsqueeze(-1)
    log_pdf = -0.5 * (y - means).square() / var - 0.5 * torch.log(var) - _HALF_LOG_2PI
    return -torch.logsumexp(log_w + log_pdf, dim=-1)


@dataclass(frozen=True)
class MixtureDensityHead:
    """Mixture density network head: a K-component Gaussian mixture per example.

    The model emits (B, 3K) raw outputs laid out as ``[logits (K) | means (K) | raw
    scales (K)]``: weights = softmax(logits), means are used as they are (identity; with a
    bounded ``support`` such as (0, 1) the components still live on the real line and only
    the reported mean, quantiles and samples are clipped), stds = softplus(raw) + min_std.

    All methods are free of data-dependent Python control flow, so they run under
    ``torch.func.vmap`` (stacked ensemble members); :meth:`prediction` builds a validated
    :class:`~wager.prediction.MixturePrediction` and is meant to be called outside vmap.

    Args:
        components: K >= 1 mixture components.
        min_std: floor of every component std (label units), keeps the likelihood bounded.
        support: (low, high) label range used to clip the reported mean (and the
            prediction's quantiles and samples), or None.

    Example:
        >>> head = MixtureDensityHead(components=2, min_std=0.0)
        >>> out = torch.tensor([[0.0, 0.0, -1.0, 1.0, 0.5413, 0.5413]])  # stds softplus = 1
        >>> head.out_dim, head.mean(out), head.aleatoric_std(out)  # var = 1 + 1
        (6, tensor([0.]), tensor([1.4142]))
    """

    components: int = 3
    min_std: float = 1e-3
    support: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        _check_components_and_floor(self.components, self.min_std)
        _check_support(self.support)

    @property
    def out_dim(self) -> int:
        """3K raw outputs per example: K logits, K means, K raw scales."""
        return 3 * self.components

    def mixture_components(self, outputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mixture parameters of raw outputs.

        Args:
            outputs: (..., 3K) raw outputs.

        Returns:
            weights (..., K) summing to 1, means (..., K), stds (..., K) > 0 (label units).
        """
        log_w, means, stds = _split_mixture(outputs, self.components, self.min_std)
        return log_w.exp(), means, stds

    def loss(self, outputs: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
        """Weighted mean negative log-likelihood of the labels under the mixture.

        Args:
            outputs: (B, 3K) raw outputs.
            labels: (B,) targets (label units).
            weights: (B,) non-negative sample weights, or None for all ones.

        Returns:
            scalar: sum(w * nll) / max(sum(w), eps) with
            nll = -logsumexp_k(log w_k + log N(label; mu_k, s_k^2)) in nats.
        """
        log_w, means, stds = _split_mixture(outputs, self.components, self.min_std)
        return weighted_mean(_mixture_nll(log_w, means, stds.square(), labels), weights)

    def mean(self, outputs: Tensor) -> Tensor:
        """(...) mixture mean sum_k w_k mu_k, clipped to ``support`` when it is set."""
        mean, _ = _mixture_moments(*self.mixture_components(outputs))
        if self.support is None:
            return mean
        return mean.clamp(float(self.support[0]), float(self.support[1]))

    def aleatoric_std(self, outputs: Tensor) -> Tensor:
        """(...) mixture std sqrt(sum_k w_k (s_k^2 + (mu_k - mean)^2))."""
        return _mixture_moments(*self.mixture_components(outputs))[1]

    def prediction(self, outputs: Tensor, *, method: str = "") -> MixturePrediction:
        """The mixture as a :class:`~wager.prediction.MixturePrediction`.

        Args:
            outputs: (..., 3K) raw outputs.
            method: provenance string stored in the prediction.

        Returns:
            mean/std/aleatoric_std from the mixture (epistemic_std None), with this head's
            support.
        """
        w, mu, s = self.mixture_components(outputs)
        return MixturePrediction.from_components(w, mu, s, method=method, support=self.support)


_DDN_CTR_EPS = 1e-6  # the DDN's noise term sees the model CTR clamped into [eps, 1 - eps]


def _impressions(impressions: Tensor | None, like: Tensor) -> Tensor:
    """Validated impressions as a float tensor of ``like``'s dtype."""
    if impressions is None:
        raise ValueError(
            "DeepDensityHead needs impressions: pass impressions=<(B,) tensor of the number "
            "of impressions n >= 1 over which each label's CTR was measured>"
        )
    if not isinstance(impressions, Tensor):
        raise ValueError(
            f"impressions must be a tensor of impression counts, got {type(impressions).__name__}"
        )
    n = impressions.to(dtype=like.dtype)
    # values are checked on concrete tensors only: under vmap with per-member (batched)
    # impressions a Python branch on tensor values is not allowed, so it is skipped there
    wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    concrete = wrapped is None or not wrapped(n)
    if concrete and n.numel() > 0 and not bool((n >= 1).all()):
        raise ValueError(
            "impressions must be >= 1 everywhere (each CTR label is clicks / n over n "
            f"impressions), got a minimum of {float(n.min())}; drop rows with no impressions"
        )
    return n


@dataclass(frozen=True)
class DeepDensityHead:
    """Deep density network head (Zeldes et al., 2017): an MDN of the clean CTR whose
    likelihood also models the measurement noise of an empirical CTR.

    The label is an observed CTR ``y = clicks / n`` over ``n`` impressions. The model is a
    K-component Gaussian mixture of the true (clean) CTR, laid out like
    :class:`MixtureDensityHead` (``[logits | means | raw scales]``, (B, 3K)). The observed
    CTR adds zero-mean Gaussian noise of variance ``v = m (1 - m) / n``, where ``m`` is the
    model's expected CTR (the mixture mean) clamped into [1e-6, 1 - 1e-6] and held fixed
    (detached: no gradient flows through ``m`` inside the noise term). Component k's
    likelihood is therefore ``N(y; mu_k, s_k^2 + v)``.

    ``mean``, ``aleatoric_std``, ``mixture_components`` and ``prediction`` describe the clean CTR
    (data uncertainty); :meth:`measurement_std` reports ``sqrt(v)`` separately. The loss
    needs the impressions as the keyword ``impressions``. Everything runs under
    ``torch.func.vmap`` except :meth:`prediction`.

    Args:
        components: K >= 1 mixture components.
        min_std: floor of every component std (CTR units), keeps the likelihood bounded.

    Example:
        >>> head = DeepDensityHead(components=1, min_std=0.0)
        >>> out = torch.tensor([[0.0, 0.2, 0.0]])  # one component: mean 0.2, std log 2
        >>> head.measurement_std(out, torch.tensor([100.0]))  # sqrt(0.2 * 0.8 / 100)
        tensor([0.0400])
    """

    components: int = 3
    min_std: float = 1e-3
    support: ClassVar[tuple[float, float] | None] = (0.0, 1.0)

    def __post_init__(self) -> None:
        _check_components_and_floor(self.components, self.min_std)

    @property
    def out_dim(self) -> int:
        """3K raw outputs per example: K logits, K means, K raw scales."""
        return 3 * self.components

    def mixture_components(self, outputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Clean-CTR mixture parameters of raw outputs.

        Args:
            outputs: (..., 3K) raw outputs.

        Returns:
            weights (..., K) summing to 1, means (..., K), stds (..., K) > 0 (CTR units).
        """
        log_w, means, stds = _split_mixture(outputs, self.components, self.min_std)
        return log_w.exp(), means, stds

    def noise_var(self, weights: Tensor, means: Tensor, n: Tensor) -> Tensor:
        """(...) variance m (1 - m) / n of an empirical CTR over n impressions, at the
        mixture's expected CTR m = sum(weights * means) (clamped into (0, 1)).

        Args:
            weights: (..., K) mixture weights summing to 1.
            means: (..., K) component means (CTR units).
            n: (...) impressions (> 0).
        """
        m = (weights * means).sum(dim=-1).clamp(_DDN_CTR_EPS, 1.0 - _DDN_CTR_EPS)
        return m * (1.0 - m) / n

    def loss(
        self,
        outputs: Tensor,
        labels: Tensor,
        weights: Tensor | None = None,
        *,
        impressions: Tensor | None = None,
    ) -> Tensor:
        """Weighted mean NLL of the observed CTRs under the noise-convolved mixture.

        Args:
            outputs: (B, 3K) raw outputs.
            labels: (B,) observed CTRs clicks / n, in [0, 1].
            weights: (B,) non-negative sample weights, or None for all ones.
            impressions: (B,) impressions n >= 1 behind each label (required).

        Returns:
            scalar: sum(w * nll) / max(sum(w), eps), with
            nll = -logsumexp_k(log w_k + log N(y; mu_k, s_k^2 + v)) in nats and
            v = m (1 - m) / n for the detached, clamped mixture mean m.
        """
        n = _impressions(impressions, outputs)
        if n.shape != labels.shape:
            raise ValueError(
                f"impressions has shape {tuple(n.shape)}, expected the labels' shape "
                f"{tuple(labels.shape)} (one impression count per label)"
            )
        log_w, means, stds = _split_mixture(outputs, self.components, self.min_std)
        v = self.noise_var(log_w.exp().detach(), means.detach(), n)
        var = stds.square() + v.unsqueeze(-1)
        return weighted_mean(_mixture_nll(log_w, means, var, labels), weights)

    def mean(self, outputs: Tensor) -> Tensor:
        """(...) clean-CTR mixture mean, clipped to [0, 1]."""
        mean, _ = _mixture_moments(*self.mixture_components(outputs))
        return mean.clamp(0.0, 1.0)

    def aleatoric_std(self, outputs: Tensor) -> Tensor:
        """(...) std of the clean-CTR mixture (measurement noise excluded)."""
        return _mixture_moments(*self.mixture_components(outputs))[1]

    def measurement_std(self, outputs: Tensor, impressions: Tensor) -> Tensor:
        """Std of an observed CTR over n impressions around the clean CTR.

        Args:
            outputs: (..., 3K) raw outputs.
            impressions: impressions n >= 1, shape broadcastable to ``outputs.shape[:-1]``
                (e.g. (B,) for (M, B, 3K) ensemble outputs).

        Returns:
            (...) sqrt(m (1 - m) / n) with m the mixture mean clamped into [1e-6, 1 - 1e-6].
        """
        n = _impressions(impressions, outputs)
        w, mu, _ = self.mixture_components(outputs)
        return self.noise_var(w, mu, n).sqrt()

    def prediction(
        self, outputs: Tensor, *, impressions: Tensor | None = None, method: str = ""
    ) -> MixturePrediction:
        """The clean-CTR mixture as a :class:`~wager.prediction.MixturePrediction`.

        Args:
            outputs: (..., 3K) raw outputs.
            impressions: impressions n >= 1 (broadcastable to ``outputs.shape[:-1]``) to
                fill ``measurement_std``, or None to leave it None.
            method: provenance string stored in the prediction.

        Returns:
            mixture of the clean CTR with support (0, 1); ``measurement_std`` = sqrt(v).
        """
        w, mu, s = self.mixture_components(outputs)
        ms = None
        if impressions is not None:
            ms = self.noise_var(w, mu, _impressions(impressions, outputs)).sqrt()
            ms = ms.expand(w.shape[:-1])
        return MixturePrediction.from_components(
            w, mu, s, method=method, support=self.support, measurement_std=ms
        )
