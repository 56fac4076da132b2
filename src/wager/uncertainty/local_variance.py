"""Per-prediction variance recalibration: a log-linear model of the held-out squared error.

:class:`~wager.uncertainty.conformal.VarianceScaling` fixes the average spread with one
factor. :class:`LocalVarianceScaling` refits the spread itself, row by row, on held-out
residuals::

    log Var(y | x) = w . phi(x)

fitted by the Gaussian likelihood of the residuals ``y - mean`` (convex in w), where
``phi(x)`` holds

- the model's own log aleatoric and log epistemic variances (or its log total variance
  when the prediction does not split them),
- where the mean sits on the target's support: ``z`` and ``z**2`` with ``z`` in [-1, 1]
  (a rating predicted near the top of the scale cannot err far upwards),
- covariates the caller passes, one column each; the Recommender passes how much
  training evidence backs the user and the item (:class:`SupportCovariates`).

Sign constraints keep the refit from inverting what uncertainty means: the weights of the
model's own log variances are >= 0 (a prediction the model calls less certain never comes
out more certain), and a covariate named in ``monotone`` gets a weight of the given sign
(the Recommender passes -1 for the training-row counts, so an id with fewer training rows,
an out-of-vocabulary one above all, is never made more certain by its count). The fit is
the constrained optimum (active set over Newton solves).

Why held-out residuals matter: a head that learns its noise from training residuals sees
the rows of a user with 20 ratings fitted almost exactly (the model absorbs them) and so
calls that user predictable, while on new rows that user is among the least predictable.
The validation rows never trained the model, so their residuals carry that information.

The mean never changes; std, aleatoric_std and epistemic_std are multiplied by the same
per-row factor ``exp(w . phi / 2) / std``. Like VarianceScaling this gives no finite-sample
coverage guarantee by itself; a :class:`~wager.uncertainty.conformal.SplitConformal` fitted
on OTHER held-out rows afterwards does.

Example:
    >>> import numpy as np, torch
    >>> from wager.prediction import Prediction
    >>> rng = np.random.default_rng(0)
    >>> x = rng.uniform(0.0, 1.0, 4000)
    >>> y = rng.normal(0.0, 0.2 + x)            # noise grows with x; the model says 1 always
    >>> pred = Prediction(mean=torch.zeros(4000), std=torch.ones(4000))
    >>> lv = LocalVarianceScaling().fit(pred, y, x[:, None], names=["x"])
    >>> new = lv.transform(pred[:2], np.array([[0.0], [1.0]]))  # two rows: x = 0 and x = 1
    >>> bool(new.std[1] > 3 * new.std[0])
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from wager.errors import NotFittedError
from wager.prediction import Prediction
from wager.uncertainty.calibration import check_state
from wager.uncertainty.conformal import _flat, _flat_targets, _positive_std, rescale_std

# a log epistemic variance of exactly 0 (members that agree) is floored at this fraction of
# the mean total variance of the fit rows
_EPISTEMIC_FLOOR = 1e-4
_NEWTON_STEPS = 100


def _as_matrix(covariates: Any, n: int, who: str) -> np.ndarray:
    if covariates is None:
        return np.zeros((n, 0))
    a = covariates.detach().cpu().numpy() if isinstance(covariates, Tensor) else covariates
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] != n:
        raise ValueError(
            f"{who}: covariates has shape {a.shape} but there are {n} predictions; pass an "
            "(n, p) array, one row per prediction"
        )
    bad = ~np.isfinite(a)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"{who}: covariates has {int(bad.sum())} NaN / inf entries (first at row {row}, "
            f"column {col}); fill them (e.g. with the column's training value) before fitting"
        )
    return a


class LocalVarianceScaling:
    """Rescale each prediction's std by a log-linear model of its held-out squared error.

    Args:
        ridge: L2 penalty on the standardised feature weights (not the intercept); keeps the
            fit stable on a few thousand rows.

    Attributes:
        features_: names of the columns of phi, in order (None before fit).
        weights_: (1 + p,) intercept then weights of the standardised features.
        centre_, scale_: (p,) standardisation of phi fitted on the calibration rows.
        low_, high_: (p,) range of phi on the calibration rows; transform clips phi to it,
            so a covariate beyond what calibration saw is not extrapolated.
        epistemic_floor_: variance added to the epistemic variance before its log.
    """

    def __init__(self, ridge: float = 1e-3) -> None:
        if not (math.isfinite(ridge) and ridge >= 0.0):
            raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}")
        self.ridge = float(ridge)
        self.features_: list[str] | None = None
        self.covariate_names_: list[str] = []
        self.support_: tuple[float, float] | None = None
        self.split_: bool = False
        self.epistemic_floor_: float = 0.0
        self.weights_: np.ndarray | None = None
        self.monotone_: dict[str, int] = {}
        self.centre_ = self.scale_ = self.low_ = self.high_ = np.zeros(0)

    def _check_fitted(self) -> np.ndarray:
        if self.weights_ is None:
            raise NotFittedError(
                "LocalVarianceScaling is not fitted: call fit(prediction, targets, covariates) "
                "on held-out rows first (or load_state_dict())"
            )
        return self.weights_

    @staticmethod
    def _phi(
        prediction: Prediction,
        covariates: Any,
        split: bool,
        support: tuple[float, float] | None,
        floor: float,
        names: list[str],
    ) -> np.ndarray:
        """(n, p) raw features of each prediction (before standardisation)."""
        std = _positive_std(prediction, "LocalVarianceScaling")
        cols: list[np.ndarray] = []
        if split:
            if prediction.aleatoric_std is None or prediction.epistemic_std is None:
                raise ValueError(
                    "LocalVarianceScaling was fitted on predictions with aleatoric_std and "
                    f"epistemic_std, but this one (method={prediction.method!r}) lacks them; "
                    "pass predictions of the model it was fitted on"
                )
            ale = _flat(prediction.aleatoric_std, "prediction.aleatoric_std")
            epi = _flat(prediction.epistemic_std, "prediction.epistemic_std")
            cols += [np.log(np.maximum(ale, 1e-12) ** 2), np.log(epi**2 + floor)]
        else:
            cols.append(np.log(std**2))
        if support is not None:
            lo, hi = support
            z = (2.0 * _flat(prediction.mean, "prediction.mean") - lo - hi) / (hi - lo)
            cols += [z, z**2]
        cov = _as_matrix(covariates, std.size, "LocalVarianceScaling")
        if cov.shape[1] != len(names):
            raise ValueError(
                f"LocalVarianceScaling was fitted with {len(names)} covariates "
                f"({names}) but got {cov.shape[1]}; pass the same columns"
            )
        return np.column_stack(cols + [cov[:, j] for j in range(cov.shape[1])])

    def fit(
        self,
        prediction: Prediction,
        targets: Tensor | np.ndarray,
        covariates: Tensor | np.ndarray | None = None,
        names: Sequence[str] | None = None,
        monotone: Mapping[str, int] | None = None,
    ) -> LocalVarianceScaling:
        """Fit the variance model on held-out rows.

        Args:
            prediction: (n,) predictions with std > 0 (the model's raw output).
            targets: (n,) observed targets.
            covariates: optional (n, p) extra features per prediction.
            names: p names of the covariate columns (for the state and error messages).
            monotone: {covariate name: +1 or -1}: the variance may only grow (+1) or only
                shrink (-1) as that covariate grows; other covariates are free. The
                model's own log variances are always +1.

        Returns:
            self.
        """
        y = _flat_targets(prediction, targets)
        mu = _flat(prediction.mean, "prediction.mean")
        std = _positive_std(prediction, "LocalVarianceScaling")
        cov = _as_matrix(covariates, y.size, "LocalVarianceScaling")
        names = [f"covariate_{j}" for j in range(cov.shape[1])] if names is None else list(names)
        if len(names) != cov.shape[1]:
            raise ValueError(f"names has {len(names)} entries for {cov.shape[1]} covariates")
        signs = dict(monotone or {})
        unknown = sorted(set(signs) - set(names))
        if unknown:
            raise ValueError(
                f"monotone names {unknown} are not covariates; the covariates are {names}"
            )
        bad = {k: v for k, v in signs.items() if v not in (-1, 1)}
        if bad:
            raise ValueError(f"monotone values must be +1 or -1, got {bad}")
        e = (y - mu) ** 2
        if not np.any(e > 0.0):
            raise ValueError(
                "targets equal prediction.mean exactly on every row; fit on held-out data, "
                "not on the training targets"
            )
        split = prediction.aleatoric_std is not None and prediction.epistemic_std is not None
        support = None
        if prediction.support is not None and prediction.support[1] > prediction.support[0]:
            support = (float(prediction.support[0]), float(prediction.support[1]))
        floor = _EPISTEMIC_FLOOR * float(np.mean(std**2))
        phi = self._phi(prediction, cov, split, support, floor, names)
        centre, spread = phi.mean(axis=0), phi.std(axis=0)
        scale = np.where(spread > 0.0, spread, 1.0)
        x = np.column_stack([np.ones(y.size), (phi - centre) / scale])
        model = ["log_aleatoric_var", "log_epistemic_var"] if split else ["log_var"]
        position = ["support_z", "support_z2"] if support is not None else []
        # intercept free; the standardisation keeps each weight's sign (scale > 0)
        sign = np.array(
            [0] + [1] * len(model) + [0] * len(position) + [signs.get(c, 0) for c in names]
        )
        weights = self._constrained(x, e, sign)
        # nothing is assigned before every step succeeded: a failed refit keeps the old state
        self.features_ = model + position + names
        self.covariate_names_, self.split_, self.support_ = names, split, support
        self.epistemic_floor_ = floor
        self.low_, self.high_ = phi.min(axis=0), phi.max(axis=0)
        self.centre_, self.scale_, self.weights_ = centre, scale, weights
        self.monotone_ = {name: int(v) for name, v in signs.items()}
        return self

    def _gradient(self, x: np.ndarray, e: np.ndarray, w: np.ndarray) -> np.ndarray:
        pen = np.full(w.size, self.ridge)
        pen[0] = 0.0
        return x.T @ (1.0 - e * np.exp(-(x @ w))) / len(e) + 2.0 * pen * w

    def _constrained(self, x: np.ndarray, e: np.ndarray, sign: np.ndarray) -> np.ndarray:
        """The Newton optimum with sign[j] * w[j] >= 0 wherever sign[j] != 0 (active set).

        Weights that leave their half-line are pinned at 0 and the rest re-solved; a pinned
        weight whose gradient points into its half-line (a negative multiplier) is released.
        The objective is convex, so the point meeting these KKT conditions is the optimum.
        """
        pinned = np.zeros(sign.size, dtype=bool)
        w = np.zeros(sign.size)
        for _ in range(4 * sign.size + 4):
            free = ~pinned
            w = np.zeros(sign.size)
            w[free] = self._newton(x[:, free], e)
            wrong = free & (sign * w < 0.0)
            if wrong.any():
                pinned |= wrong
                continue
            multiplier = sign * self._gradient(x, e, w)  # >= 0 at a constrained optimum
            release = pinned & (multiplier < -1e-9)
            if not release.any():
                return w
            pinned[np.argmin(np.where(release, multiplier, np.inf))] = False
        # out of iterations (cycling; not seen in practice): pin what still breaks its sign
        pinned |= sign * w < 0.0
        w = np.zeros(sign.size)
        w[~pinned] = self._newton(x[:, ~pinned], e)
        return w

    def _newton(self, x: np.ndarray, e: np.ndarray) -> np.ndarray:
        """Minimise mean(eta + e * exp(-eta)) + ridge * |w[1:]|^2 with eta = x @ w (convex)."""
        n, p = x.shape
        pen = np.full(p, self.ridge)
        pen[0] = 0.0
        w = np.zeros(p)
        w[0] = math.log(float(np.mean(e)))

        def loss(v: np.ndarray) -> float:
            eta = x @ v
            return float(np.mean(eta + e * np.exp(-eta)) + np.sum(pen * v**2))

        current = loss(w)
        for _ in range(_NEWTON_STEPS):
            r = e * np.exp(-(x @ w))
            grad = self._gradient(x, e, w)
            hess = (x * r[:, None]).T @ x / n + np.diag(2.0 * pen) + 1e-10 * np.eye(p)
            step = np.linalg.solve(hess, grad)
            t, trial = 1.0, loss(w - step)
            while trial > current and t > 1e-8:
                t /= 2.0
                trial = loss(w - t * step)
            if trial > current:  # no descent along the Newton direction: at the optimum
                break
            w, previous, current = w - t * step, current, trial
            if previous - current < 1e-12:
                break
        return w

    def variance(self, prediction: Prediction, covariates: Any = None) -> Tensor:
        """(...) modelled predictive variance of each prediction (shaped like the mean)."""
        w = self._check_fitted()
        raw = self._phi(
            prediction,
            covariates,
            self.split_,
            self.support_,
            self.epistemic_floor_,
            self.covariate_names_,
        )
        phi = np.clip(raw, self.low_, self.high_)
        eta = w[0] + ((phi - self.centre_) / self.scale_) @ w[1:]
        var = torch.from_numpy(np.exp(eta)).reshape(prediction.mean.shape)
        return var.to(prediction.mean.dtype)

    def transform(self, prediction: Prediction, covariates: Any = None) -> Prediction:
        """Prediction whose std is the modelled one (each std part rescaled by one factor).

        Args:
            prediction: (n,) raw predictions, as passed to fit.
            covariates: (n, p) the same covariate columns as in fit.

        Returns:
            New Prediction; same mean and support, method suffixed "+local_variance_scaling".
        """
        var = self.variance(prediction, covariates)
        assert prediction.std is not None  # _phi checked it
        factor = var.sqrt() / prediction.std.cpu().to(var.dtype)
        return rescale_std(prediction, factor, "LocalVarianceScaling")

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state (kind "local_variance_scaling")."""
        w = self._check_fitted()
        return {
            "kind": "local_variance_scaling",
            "ridge": self.ridge,
            "features": self.features_,
            "covariates": self.covariate_names_,
            "support": None if self.support_ is None else list(self.support_),
            "split": self.split_,
            "epistemic_floor": self.epistemic_floor_,
            "monotone": self.monotone_,
            "weights": w.tolist(),
            "centre": self.centre_.tolist(),
            "scale": self.scale_.tolist(),
            "low": self.low_.tolist(),
            "high": self.high_.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> LocalVarianceScaling:
        """Restore from :meth:`state_dict`; returns self."""
        keys = ("features", "covariates", "support", "split", "epistemic_floor", "weights")
        check_state(state, "local_variance_scaling", (*keys, "centre", "scale", "low", "high"))
        self.ridge = float(state.get("ridge", self.ridge))
        self.features_ = [str(f) for f in state["features"]]
        self.covariate_names_ = [str(c) for c in state["covariates"]]
        self.support_ = None if state["support"] is None else tuple(state["support"])
        self.split_ = bool(state["split"])
        self.epistemic_floor_ = float(state["epistemic_floor"])
        self.monotone_ = {str(k): int(v) for k, v in state.get("monotone", {}).items()}
        arrays = {
            k: np.asarray(state[k], dtype=np.float64) for k in ("centre", "scale", "low", "high")
        }
        w = np.asarray(state["weights"], dtype=np.float64)
        p = len(self.features_)
        if w.shape != (p + 1,) or any(a.shape != (p,) for a in arrays.values()):
            raise ValueError(
                f"state has {w.size} weights for {p} features; the state is corrupt — refit"
            )
        self.centre_, self.scale_ = arrays["centre"], arrays["scale"]
        self.low_, self.high_ = arrays["low"], arrays["high"]
        self.weights_ = w
        return self


class SupportCovariates:
    """How much training evidence backs each id: a covariate table per id field.

    For every id (encoded index of a user / item id field) two numbers from the training
    rows: ``log(1 + rows)`` and the log std of its labels, shrunk towards the overall label
    std by ``prior_rows`` pseudo-rows: ``var = (SS + k s^2) / (max(n - 1, 0) + k)`` with SS
    the id's sum of squared deviations, s^2 the overall label variance, k = prior_rows (an
    id with 0 or 1 rows gets s^2). The out-of-vocabulary index 0 has 0 rows.

    Args:
        prior_rows: k > 0, pseudo-rows of the overall spread in each id's estimate.

    Attributes:
        names_: covariate names, two per key: "<key>:log1p_rows", "<key>:log_label_std".
        tables_: {key: (cardinality, 2) array} looked up by encoded index.
    """

    def __init__(self, prior_rows: float = 5.0) -> None:
        if not (math.isfinite(prior_rows) and prior_rows > 0.0):
            raise ValueError(f"prior_rows must be a finite number > 0, got {prior_rows!r}")
        self.prior_rows = float(prior_rows)
        self.tables_: dict[str, np.ndarray] = {}

    @property
    def names_(self) -> list[str]:
        return [f"{k}:{c}" for k in self.tables_ for c in ("log1p_rows", "log_label_std")]

    @property
    def monotone_(self) -> dict[str, int]:
        """{covariate name: -1} for the row counts: more training rows never add variance."""
        return {f"{k}:log1p_rows": -1 for k in self.tables_}

    def fit(
        self,
        indices: Mapping[str, Tensor | np.ndarray],
        labels: Tensor | np.ndarray,
        cardinalities: Mapping[str, int],
    ) -> SupportCovariates:
        """Build the tables from the training rows.

        Args:
            indices: {key: (n,) encoded index of each training row's id}.
            labels: (n,) training labels.
            cardinalities: {key: number of rows of the id's embedding table (OOV included)}.

        Returns:
            self.
        """
        y = np.asarray(
            labels.detach().cpu().numpy() if isinstance(labels, Tensor) else labels,
            dtype=np.float64,
        ).reshape(-1)
        if y.size < 2 or not np.all(np.isfinite(y)):
            raise ValueError("labels must hold >= 2 finite training labels")
        overall = float(np.var(y, ddof=1))
        overall = overall if overall > 0.0 else 1.0
        k = self.prior_rows
        self.tables_ = {}
        for key, idx in indices.items():
            ix = np.asarray(
                idx.detach().cpu().numpy() if isinstance(idx, Tensor) else idx, dtype=np.int64
            ).reshape(-1)
            size = int(cardinalities[key])
            if ix.shape != y.shape or ix.min(initial=0) < 0 or ix.max(initial=0) >= size:
                raise ValueError(
                    f"indices[{key!r}] must be {y.size} encoded indices in [0, {size}); got "
                    f"shape {ix.shape}, range [{ix.min(initial=0)}, {ix.max(initial=0)}]"
                )
            n = np.bincount(ix, minlength=size).astype(np.float64)
            total = np.bincount(ix, weights=y, minlength=size)
            mean = np.divide(total, n, out=np.zeros(size), where=n > 0)
            ss = np.bincount(ix, weights=(y - mean[ix]) ** 2, minlength=size)
            var = (ss + k * overall) / (np.maximum(n - 1.0, 0.0) + k)
            self.tables_[key] = np.column_stack([np.log1p(n), 0.5 * np.log(var)])
        return self

    def __call__(self, batch: Mapping[str, Tensor]) -> np.ndarray:
        """(n, 2 * keys) covariates of the rows of an encoded batch."""
        cols = []
        for key, table in self.tables_.items():
            ix = batch[key].detach().cpu().numpy().astype(np.int64).reshape(-1)
            # an index outside the table (a vocabulary grown after fit) is out of vocabulary
            cols.append(table[np.where((ix >= 0) & (ix < len(table)), ix, 0)])
        if not cols:
            first = next(iter(batch.values()), None)
            return np.zeros((0 if first is None else len(first), 0))
        return np.concatenate(cols, axis=1)

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state (kind "support_covariates")."""
        return {
            "kind": "support_covariates",
            "prior_rows": self.prior_rows,
            "tables": {k: v.tolist() for k, v in self.tables_.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> SupportCovariates:
        """Restore from :meth:`state_dict`; returns self."""
        check_state(state, "support_covariates", ("prior_rows", "tables"))
        self.prior_rows = float(state["prior_rows"])
        self.tables_ = {
            str(k): np.asarray(v, dtype=np.float64).reshape(-1, 2)
            for k, v in state["tables"].items()
        }
        return self
