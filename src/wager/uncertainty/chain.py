"""PostHocChain: every post-hoc uncertainty step behind one interface.

After training, a model's raw :class:`~wager.prediction.Prediction` goes through the steps the
``[uncertainty]`` config asks for, each fitted on held-out validation rows:

- ``calibrator``: Platt / isotonic / temperature map of click probabilities;
- ``variance_scaling``: one factor on the std (ratings);
- ``local_variance``: the std refitted from the head's variances and the training support of
  the user and item ids (ratings; its covariate tables are fitted on the training rows);
- ``conformal``: split-conformal intervals (homoscedastic or normalised by the std);
- ``relevance``: the map from a rating's P(rating >= threshold) to a calibrated relevance
  probability, or for retrieval / implicit models the softmax temperature of the list
  relevance model.

The chain owns the split of the validation rows between steps (the conformal step calibrates
on rows the local variance model never saw), its own persistence (``state_dict`` /
``load_state_dict``, one loop over the steps) and can be refitted on new calibration rows of
an existing run without retraining (``wager calibrate``; scikit-learn's "prefit" pattern).

Example:
    >>> import torch
    >>> from wager.config import UncertaintyConfig
    >>> from wager.prediction import Prediction
    >>> chain = PostHocChain(UncertaintyConfig(conformal="homoscedastic"))
    >>> pred = Prediction(mean=torch.zeros(200), std=None)
    >>> chain = chain.fit_pointwise("rating", pred, torch.randn(200), None)
    >>> chain.kind
    'conformal'
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from wager.config import UncertaintyConfig
from wager.prediction import Prediction
from wager.uncertainty.calibration import IsotonicCalibration, PlattScaling, TemperatureScaling
from wager.uncertainty.conformal import SplitConformal, VarianceScaling
from wager.uncertainty.local_variance import LocalVarianceScaling, SupportCovariates
from wager.uncertainty.relevance import (
    ListRelevanceCalibrator,
    RelevanceCalibrator,
    load_relevance_calibrator,
    relevance_probability,
)

ProbabilityCalibrator = PlattScaling | IsotonicCalibration | TemperatureScaling
CALIBRATORS: dict[str, type[ProbabilityCalibrator]] = {
    "platt": PlattScaling,
    "isotonic": IsotonicCalibration,
    "temperature": TemperatureScaling,
}
# the steps in the order they apply, with how each one is rebuilt from its state
_STEPS = (
    "calibrator",
    "variance_scaling",
    "support_covariates",
    "local_variance",
    "conformal",
    "relevance",
)
# the state key of the relevance step in run files written before the chain existed
_LEGACY_KEYS = {"relevance_calibrator": "relevance"}


class PostHocChain:
    """The fitted post-hoc steps of one run (see the module docstring).

    Args:
        config: the run's ``[uncertainty]`` section.
        relevance_threshold: ratings: labels >= this are relevant (``[evaluation]``), or None.
        seed: seeds the split of validation rows between local variance and conformal.

    Attributes:
        calibrator, variance_scaling, local_variance, support_covariates, conformal,
        relevance: the fitted steps, None when not asked for (or not fitted).
    """

    def __init__(
        self,
        config: UncertaintyConfig | None = None,
        relevance_threshold: float | None = None,
        seed: int | None = None,
    ) -> None:
        self.config = config or UncertaintyConfig()
        self.relevance_threshold = relevance_threshold
        self.seed = seed
        self.calibrator: ProbabilityCalibrator | None = None
        self.variance_scaling: VarianceScaling | None = None
        self.support_covariates: SupportCovariates | None = None
        self.local_variance: LocalVarianceScaling | None = None
        self.conformal: SplitConformal | None = None
        self.relevance: RelevanceCalibrator | ListRelevanceCalibrator | None = None

    @property
    def kind(self) -> str:
        """The fitted steps in the order they apply, e.g. "local_variance+conformal"."""
        names = [n for n in _STEPS if n != "support_covariates" and getattr(self, n) is not None]
        return "+".join(names) or "none"

    # ------------------------------------------------------------------ fitting
    def fit_support(
        self, ids: dict[str, Tensor], labels: np.ndarray, sizes: dict[str, int]
    ) -> PostHocChain:
        """Fit the local variance model's per-id covariate tables on the TRAINING rows.

        Args:
            ids: {id field key: (n,) int64 encoded ids of the training rows}.
            labels: (n,) training labels.
            sizes: {id field key: vocabulary size including OOV}.
        """
        self.support_covariates = SupportCovariates().fit(ids, labels, sizes)
        return self

    def covariates(self, batch: dict[str, Tensor]) -> np.ndarray | None:
        """(n, p) local variance covariates of an encoded batch (None without the step)."""
        return None if self.support_covariates is None else self.support_covariates(batch)

    def fit_pointwise(
        self, task: str, pred: Prediction, y: Tensor, covariates: np.ndarray | None
    ) -> PostHocChain:
        """Fit the steps of a rating / click model on validation rows.

        Args:
            task: "click" or "rating".
            pred: raw predictions of the validation rows, mean (n,).
            y: (n,) their labels.
            covariates: (n, p) their local variance covariates (needed with local_variance).
        """
        uc = self.config
        self.calibrator = self.variance_scaling = self.local_variance = None
        self.conformal = self.relevance = None
        if task == "click":
            if uc.calibrator != "none":
                self.calibrator = CALIBRATORS[uc.calibrator]().fit(pred.mean, y)
                _warn_reversed(self.calibrator, y)
            return self
        if uc.variance_scaling:
            self.variance_scaling = VarianceScaling().fit(pred, y)
            pred = self.variance_scaling.transform(pred)
        conformal_rows = np.arange(len(y))  # validation rows the conformal step calibrates on
        if uc.local_variance:
            assert self.support_covariates is not None and covariates is not None
            variance_rows = conformal_rows
            if uc.conformal != "none":
                # the conformal step must calibrate on rows the variance model never saw
                order = np.random.default_rng(self.seed).permutation(len(y))
                variance_rows, conformal_rows = order[: len(y) // 2], order[len(y) // 2 :]
            sel = torch.as_tensor(variance_rows)
            self.local_variance = LocalVarianceScaling().fit(
                pred[sel],
                y[sel],
                covariates[variance_rows],
                names=self.support_covariates.names_,
                monotone=self.support_covariates.monotone_,
            )
            pred = self.local_variance.transform(pred, covariates)
        if uc.conformal != "none":
            floor = 0.0
            if pred.std is not None and bool((pred.std > 0).any()):
                # members that agree exactly (all clipped to a bound) give std 0
                floor = 0.01 * float(pred.std[pred.std > 0].median())
            part = torch.as_tensor(conformal_rows)
            self.conformal = SplitConformal(
                normalized=uc.conformal == "normalized", std_floor=floor
            ).fit(pred[part], y[part], confidence_levels=uc.confidence_levels)
        thr = self.relevance_threshold
        if thr is not None and pred.std is not None:
            relevant = (y >= thr).to(torch.float32)
            if 0 < float(relevant.mean()) < 1:
                raw = relevance_probability(pred, thr)
                self.relevance = RelevanceCalibrator().fit(raw, relevant)
        return self

    def fit_lists(
        self, score_rows: list[Tensor], positives: list[list[np.ndarray]]
    ) -> PostHocChain:
        """Retrieval / implicit: fit the list relevance model's softmax temperature.

        Args:
            score_rows: chunks of (U_c, I) catalogue scores with each user's seen items at -inf.
            positives: per chunk, each user's validation positives (catalogue rows).
        """
        try:
            self.relevance = ListRelevanceCalibrator().fit(score_rows, positives)
        except ValueError:
            self.relevance = None
        return self

    # ------------------------------------------------------------------ applying
    def transform(self, pred: Prediction, covariates: np.ndarray | None = None) -> Prediction:
        """Apply the fitted steps in order (``covariates`` = :meth:`covariates` of the rows)."""
        if self.calibrator is not None:
            pred = self.calibrator.calibrate(pred)
        if self.variance_scaling is not None and pred.std is not None:
            pred = self.variance_scaling.transform(pred)
        if self.local_variance is not None and pred.std is not None:
            pred = self.local_variance.transform(pred, covariates)
        if self.conformal is not None:
            pred = self.conformal.conformalize(pred)
        return pred

    def relevance_probability(self, pred: Prediction) -> Tensor | None:
        """(n,) calibrated P(rating >= threshold) of a rating prediction with a std, else None."""
        thr = self.relevance_threshold
        if thr is None or pred.std is None:
            return None
        p = relevance_probability(pred, thr)
        if isinstance(self.relevance, RelevanceCalibrator):
            p = self.relevance.transform(p)
        return p

    @property
    def list_relevance(self) -> ListRelevanceCalibrator | None:
        """The list relevance model of a retrieval / implicit run, or None."""
        return self.relevance if isinstance(self.relevance, ListRelevanceCalibrator) else None

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state of every fitted step, keyed by step name."""
        return {n: getattr(self, n).state_dict() for n in _STEPS if getattr(self, n) is not None}

    def load_state_dict(
        self, state: dict[str, Any], source: str = "uncertainty.json"
    ) -> PostHocChain:
        """Rebuild the steps from :meth:`state_dict` (``source`` names the file in errors)."""
        state = {_LEGACY_KEYS.get(k, k): v for k, v in state.items()}
        unknown = sorted(set(state) - set(_STEPS) - {"population_picks"})
        if unknown:
            raise ValueError(f"{source}: unknown post-hoc steps {unknown}; retrain the run")
        if "calibrator" in state:
            name = self.config.calibrator
            if name not in CALIBRATORS:
                raise ValueError(
                    f"{source}: a probability calibrator is saved but [uncertainty] "
                    f"calibrator = {name!r}; retrain the run or run `wager calibrate`"
                )
            self.calibrator = CALIBRATORS[name]().load_state_dict(state["calibrator"])
        if "variance_scaling" in state:
            self.variance_scaling = VarianceScaling().load_state_dict(state["variance_scaling"])
        if "support_covariates" in state:
            self.support_covariates = SupportCovariates().load_state_dict(
                state["support_covariates"]
            )
        if "local_variance" in state:
            self.local_variance = LocalVarianceScaling().load_state_dict(state["local_variance"])
        if "conformal" in state:
            self.conformal = SplitConformal().load_state_dict(state["conformal"])
        if "relevance" in state:
            self.relevance = load_relevance_calibrator(state["relevance"])
        return self


def _warn_reversed(calibrator: ProbabilityCalibrator, y: Tensor) -> None:
    slope = getattr(calibrator, "slope_", None)
    if slope is not None and slope < 0:
        warnings.warn(
            f"[uncertainty] calibrator = 'platt' fitted a negative slope ({slope:.3g}) on "
            f"{len(y)} validation rows with {int(y.sum())} clicks: the model ranks "
            "them worse than chance, so the calibrated CTRs reverse its order. Use more "
            "validation rows ([data] valid_fraction) or calibrator = 'isotonic' "
            "(monotone non-decreasing)",
            stacklevel=3,
        )
