"""Recommender: the thin, scikit-learn-like facade used by the CLI, serving and notebooks.

``Recommender(config).fit(train, valid)`` checks the whole config, fits the encoders on the
training split, builds the model named by ``config.model.type`` (one model, or a deep
ensemble of it) and trains it; then ``predict`` -> :class:`~wager.prediction.Prediction`,
``recommend`` -> top-k DataFrame, ``evaluate`` -> metrics dict, ``save`` / ``load`` a run
folder. Each concern has one home it delegates to: :class:`ModelSpec` (what the config
implies), :class:`Catalogue` (items, users, seen), :mod:`fitting <wager.recommender.fitting>`
(training), :class:`Scorer` (every scoring path), :class:`PostHocChain` (post-hoc steps),
:mod:`wager.evaluation.report` and :class:`~wager.runs.RunDirectory` (the run folder).

Unknown users and items go through the out-of-vocabulary row and their features: cold start,
never a KeyError.

Example:
    >>> import pandas as pd
    >>> from wager.config import RunConfig, TrainConfig, EnsembleConfig
    >>> from wager.data.schema import Schema
    >>> df = pd.DataFrame({"user_id": [1, 1, 2, 2], "item_id": [1, 2, 1, 2],
    ...                    "click": [1, 0, 0, 1]})
    >>> cfg = RunConfig(schema=Schema(label="click"), training=TrainConfig(epochs=2),
    ...                 ensemble=EnsembleConfig(members=2))
    >>> rec = Recommender(cfg).fit(df)
    >>> rec.predict([1], [2]).mean.shape
    torch.Size([1])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from wager.config import RunConfig
from wager.data.features import InteractionEncoder
from wager.data.schema import Schema
from wager.data.streaming import StreamedRows
from wager.errors import NotFittedError
from wager.evaluation import oov, report
from wager.models.heads import Head
from wager.policies import Policy, PolicyState
from wager.prediction import MixturePrediction, Prediction
from wager.recommender import candidates, changes, fitting, members, persist, streamed
from wager.recommender.catalogue import Catalogue
from wager.recommender.listing import recommend_frame
from wager.recommender.scoring import Batch, Context, Scorer, to_tensors
from wager.recommender.spec import ModelSpec
from wager.training.checkpoint import Checkpoint, EpochHook
from wager.training.fanout import Runner
from wager.training.history import History
from wager.training.trainer import resolve_device
from wager.uncertainty.chain import PostHocChain
from wager.uncertainty.recalibration import OnlineRecalibration
from wager.uncertainty.relevance import list_confidence


class Recommender:
    """Fit / predict / recommend / evaluate / save / load any wager model.

    Learned state ends in ``_``: ``encoder_``, ``scorer_`` (the trained members, catalogue
    and every scoring path), ``chain_`` (the post-hoc steps), ``history_``, ``metrics_``.
    Calling a fitted-state method before ``fit`` raises :class:`~wager.errors.NotFittedError`.

    Args:
        config: the run configuration (``config.schema`` must be set before ``fit``).
    """

    def __init__(self, config: RunConfig | None = None) -> None:
        self.config = config or RunConfig()
        self.spec = ModelSpec.from_config(self.config)
        self.encoder_: InteractionEncoder | None = None
        self._scorer: Scorer | None = None
        self.chain_ = self._new_chain()
        self.history_: History | None = None
        self.metrics_: dict[str, Any] = {}
        self.candidates_: candidates.CandidateIndex | None = None

    def _new_chain(self) -> PostHocChain:
        return PostHocChain(
            self.config.uncertainty, self.config.evaluation.relevance_threshold, self.config.seed
        )

    # ------------------------------------------------------------------ what the spec says
    @property
    def schema(self) -> Schema:
        """The data schema (an error when the config has none)."""
        return self.spec.schema

    @property
    def task(self) -> str:
        """What the model learns: "click", "rating", "retrieval" or "implicit"."""
        return self.spec.task

    @property
    def head(self) -> Head | None:
        """The likelihood head (None for retrieval scores)."""
        return self.spec.head

    @property
    def method(self) -> str:
        """Provenance string of predictions."""
        return self.spec.method

    @property
    def scorer_(self) -> Scorer:
        """The fitted scorer (NotFittedError before fit / load)."""
        if self._scorer is None:
            raise NotFittedError("this Recommender is not fitted: call fit() (or load()) first")
        return self._scorer

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        train: pd.DataFrame,
        valid: pd.DataFrame | None = None,
        *,
        user_features: pd.DataFrame | None = None,
        item_features: pd.DataFrame | None = None,
        show_progress: bool = False,
        on_epoch: EpochHook | None = None,
        checkpoint: Checkpoint | None = None,
        runner: Runner | None = None,
    ) -> Recommender:
        """Check the config, fit encoders (training split only), train the model and the
        post-hoc chain; returns self.

        Args:
            train: interaction rows with the schema's user, item, label and context columns.
            valid: rows for early stopping (validation RMSE for ratings, log-loss for clicks,
                impression-weighted squared error of the mean CTR for "mdn" / "ddn", NDCG@k
                for retrieval / implicit) and for the post-hoc chain, or None.
            user_features: user feature table keyed by ``schema.user``, or None.
            item_features: item feature table keyed by ``schema.item``, or None (a refit adds
                the stored rows of catalogue items it lacks; retired ids stay retired).
            show_progress: draw a progress bar.
            on_epoch: called with each epoch's :class:`~wager.training.checkpoint.EpochReport`.
            checkpoint: the training loop's state is saved there after each epoch, and a
                state found there is continued (same config and data: same result).
            runner: where the members of an ``[ensemble] fit = "separate"`` run train, e.g.
                :class:`~wager.training.fanout.RayRunner` (default: here, one after
                another; the same members either way).
        """
        spec, s = self.spec, self.schema
        spec.validate()
        separate = self.config.ensemble is not None and self.config.ensemble.fit == "separate"
        if runner is not None and not separate:
            raise ValueError(
                f"a {runner.name} runner trains ensemble members in loops of their own: set "
                '[ensemble] fit = "separate" (with members >= 2)'
            )
        spec.check_columns(train, "train")
        if valid is not None:
            spec.check_columns(valid, "valid")
        asked = spec.post_hoc_steps()
        if asked and spec.pointwise and (valid is None or not len(valid)):
            raise ValueError(
                f"[uncertainty] {asked[0]} is fitted on validation rows, but there are "
                "none: set [data] valid_fraction > 0 (or pass valid to fit())"
            )
        fit_rows = fitting.fit_rows(spec, train)
        item_features, retired = changes.carried_over(self._scorer, item_features)
        device = resolve_device(self.config.training.device)
        mc = self.config.model
        self.encoder_ = enc = InteractionEncoder.from_schema(
            s, mc.user_min_count, mc.item_min_count
        )
        enc.fit(fit_rows, user_features, item_features)
        # items seen in the validation rows are history too: recommend() / evaluate() exclude them
        history = train if valid is None else pd.concat([train, valid], ignore_index=True)
        label_mean = 0.0
        if spec.task == "rating":
            label_mean = float(np.mean(fit_rows[s.label].to_numpy(dtype=float)))
        catalogue = Catalogue.fit(
            history, fit_rows, item_features, s, spec.task == "click", label_mean
        )
        train_t = to_tensors(enc.transform(fit_rows), device)
        for t in spec.tasks[1:]:  # [[model.tasks]]: each further task's label
            train_t[t.label_key] = torch.tensor(t.labels(fit_rows), dtype=torch.float32).to(device)
        self.chain_ = self._new_chain()
        if self.config.uncertainty.local_variance and spec.task == "rating":
            sizes = {key: size for key, kind, size in enc.fields() if kind == "index"}
            keys = [k for k in (f"user.{s.user}", f"item.{s.item}") if k in sizes]
            self.chain_.fit_support(
                {k: train_t[k] for k in keys},
                fit_rows[s.label].to_numpy(dtype=np.float64),
                {k: sizes[k] for k in keys},
            )
        fields = fitting.fields_of(enc)
        stack = fitting.build_stack(spec, fields, label_mean, device, catalogue.n_items)
        self._scorer = Scorer(spec, enc, stack, catalogue)
        train_args = (self._scorer, train_t, fit_rows, train, valid)
        if separate:
            self.history_ = hist = members.train_separately(
                *train_args, runner, show_progress, on_epoch, checkpoint
            )
        else:
            self.history_ = hist = fitting.train_members(
                *train_args, show_progress, on_epoch, checkpoint
            )
        catalogue.retire(retired, missing_ok=True)
        if valid is not None and len(valid):
            self.calibrate(valid, train)
        self.metrics_ = fitting.fit_metrics(spec, hist, catalogue.n_items)
        return self

    def fit_stream(
        self,
        rows: StreamedRows,
        *,
        show_progress: bool = False,
        on_epoch: EpochHook | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> Recommender:
        """:meth:`fit` on training rows streamed from Parquet (rating and click models; see
        :mod:`wager.data.streaming`); returns self.

        The id vocabularies come from the first pass's exact counts, the context encoders
        from its uniform sample, the catalogue from its items (with no seen matrix: a
        streamed run's recommend() excludes nothing by itself); each epoch streams the
        training rows through the shuffle buffer; the validation rows (in memory) stop
        training and fit the post-hoc chain.
        """
        spec = self.spec
        spec.validate()
        spec.check_streamable()
        valid = rows.scan.valid
        asked = spec.post_hoc_steps()
        if asked and (valid is None or not len(valid)):
            raise ValueError(
                f"[uncertainty] {asked[0]} is fitted on validation rows, but there are "
                "none: set [data] valid_fraction > 0"
            )
        self.chain_ = self._new_chain()
        self.encoder_, self._scorer, self.history_ = streamed.fit_streamed(
            spec, rows, show_progress, on_epoch, checkpoint
        )
        if valid is not None and len(valid):
            self.calibrate(valid)
        n_items = self._scorer.catalogue.n_items
        self.metrics_ = fitting.fit_metrics(spec, self.history_, n_items)
        return self

    def calibrate(self, valid: pd.DataFrame, history: pd.DataFrame | None = None) -> Recommender:
        """(Re)fit the post-hoc chain on calibration rows ``valid`` (held-out labelled rows;
        retrieval / implicit: positives whose softmax temperature is fitted), without
        retraining; ``history``: rows whose items the validation lists exclude (retrieval /
        implicit; default the run's whole seen history). Returns self."""
        scorer, spec, s = self.scorer_, self.spec, self.schema
        spec.check_columns(valid, "calibration")
        support = self.chain_.support_covariates
        self.chain_ = self._new_chain()
        self.chain_.support_covariates = support
        if spec.ranking:
            rows, positives = fitting.list_calibration_rows(scorer, valid, history)
            if rows:
                self.chain_.fit_lists(rows, positives)
            return self
        if s.label is None or spec.mixture:
            return self
        if not spec.post_hoc_steps() and (
            spec.task == "click" or self.config.evaluation.relevance_threshold is None
        ):
            return self  # nothing to fit: skip scoring the validation rows
        y = torch.tensor(valid[s.label].to_numpy(dtype=np.float64), dtype=torch.float32)
        pred, cov = scorer.prediction(
            valid[s.user].to_numpy(), valid[s.item].to_numpy(), valid,
            covariates=self.chain_.covariates,
        )  # fmt: skip
        self.chain_.fit_pointwise(spec.task, pred, y, cov)
        return self

    # ------------------------------------------------------------------ predictions
    def predict(
        self,
        user_ids: Sequence[Any] | np.ndarray,
        item_ids: Sequence[Any] | np.ndarray,
        context: Context = None,
        batch_size: int = 65536,
    ) -> Prediction:
        """Predictions with uncertainty for (user, item) pairs.

        Args:
            user_ids: (n,) user ids (unknown ids go through the OOV path; a missing id
                warns and is predicted as unknown).
            item_ids: (n,) item ids, paired with ``user_ids``.
            context: a DataFrame with n rows, a mapping of context column -> scalar applied
                to every pair (e.g. {"position": 1}; a key the schema lacks is an error), or
                None (missing context).
            batch_size: pairs per forward pass.

        Returns:
            Prediction of the rating / click probability / retrieval score, mean (n,), after
            the post-hoc chain. With an ensemble, std combines the members' spread
            (epistemic) and the head's noise (aleatoric); samples (M, n) are the members'
            means. A single point model has std None. Mixture likelihoods ("mdn" / "ddn")
            return the pooled clean-CTR mixture of :meth:`predict_mixture`.
        """
        if self.spec.mixture:
            return self.predict_mixture(user_ids, item_ids, context, batch_size=batch_size)
        pred, cov = self.scorer_.prediction(
            user_ids, item_ids, context, batch_size, covariates=self.chain_.covariates
        )
        return self.chain_.transform(pred, cov)

    def predict_tasks(
        self,
        user_ids: Sequence[Any] | np.ndarray,
        item_ids: Sequence[Any] | np.ndarray,
        context: Context = None,
    ) -> dict[str, Prediction]:
        """{task name: Prediction} for every task (``[[model.tasks]]``; else the one task,
        named "label"); the primary task's is :meth:`predict`'s, the others are raw."""
        out = {self.spec.tasks[0].name: self.predict(user_ids, item_ids, context)}
        for i, t in enumerate(self.spec.tasks[1:], 1):
            out[t.name] = self.scorer_.prediction(user_ids, item_ids, context, task=i)[0]
        return out

    def predict_mixture(
        self,
        user_ids: Sequence[Any] | np.ndarray,
        item_ids: Sequence[Any] | np.ndarray,
        context: Context = None,
        impressions: Sequence[float] | np.ndarray | Tensor | None = None,
        batch_size: int = 65536,
    ) -> MixturePrediction:
        """The predictive CTR mixture of a "mdn" / "ddn" model for (user, item) pairs: the
        R members' K-component mixtures pooled into one of R * K components (law of total
        variance; ``epistemic_std`` = std of the members' means, None for one member).
        ``user_ids``, ``item_ids``, ``context``, ``batch_size`` as in :meth:`predict`;
        ``impressions``: (n,) counts n >= 1 at which the CTR will be measured ("ddn" only),
        fills ``measurement_std`` = sqrt(m (1 - m) / n) around the pooled mean m. ValueError:
        not a mixture likelihood, ids that do not pair up, or bad impressions."""
        return self.scorer_.mixture(user_ids, item_ids, context, impressions, batch_size)

    def relevance_confidence(self, prediction: Prediction) -> Tensor | None:
        """(...) probability that each prediction is relevant, or None when undefined. Ratings:
        P(rating >= ``evaluation.relevance_threshold``) under the predictive distribution,
        mapped by the chain's relevance step. Clicks: the (calibrated) click probability. None
        for deterministic rating models and retrieval / implicit scores (:meth:`recommend`
        fills those from the list relevance model)."""
        if self.task == "click":
            return prediction.mean
        return self.chain_.relevance_probability(prediction) if self.task == "rating" else None

    def recommend(
        self,
        user_ids: Sequence[Any] | np.ndarray,
        k: int = 10,
        *,
        items: Sequence[Any] | np.ndarray | None = None,
        exclude_seen: bool = True,
        context: Mapping[str, Any] | None = None,
        confidence_level: float = 0.9,
        batch_users: int = 256,
        progress: Callable[[int], None] | None = None,
        horizon: float | None = None,
        policy: Policy | None = None,
        state: PolicyState | None = None,
        candidates: int | None = None,
        online: OnlineRecalibration | None = None,
    ) -> pd.DataFrame:
        """Top-k items per user with std, interval, confidence: by the mean, or by a policy.

        Args:
            user_ids: users (OOV row for unknown ones); k: >= 1; items: default the catalogue.
            exclude_seen: drop items seen in training / validation; context: applied to every
                candidate; confidence_level: of [low, high]; batch_users: users per pass.
            progress: called with users done per pass; horizon: retrieval / implicit: the H
                of confidence = P(among the next H positives) (None: validation mean).
            policy: picks k of each user's ``candidates`` (None: max(10 k, 100)) best by the
                mean, predicted with full uncertainty, drawing from ``state``.
            online: a click model's serving-time recalibration (``wager serve --recalibrate``)
                applied to the predictions before anything else reads them.

        Returns:
            DataFrame: user, item, rank (1-based; slate order with a policy), score, mean, std,
            low, high, confidence [, propensity with a policy] (``listing.recommend_frame``).
        """
        return recommend_frame(
            self, user_ids, k, items, exclude_seen, context, confidence_level, batch_users,
            progress, horizon, policy, state, candidates, online,
        )  # fmt: skip

    def index_items(self, index: Any = None) -> Recommender:
        """Bring recommend()'s candidates from a top-k ``index`` over the catalogue (e.g.
        ``FaissIndex("ivf")``; None: exact), built now (:mod:`.candidates`); returns self."""
        self.candidates_ = candidates.attach(self.scorer_, index)
        return self

    list_confidence = staticmethod(list_confidence)

    def add_items(self, item_features: pd.DataFrame) -> Recommender:
        """New items (rows: item id, the run's item feature columns) join the catalogue, scored
        from their features with cold-start uncertainty until a fit sees them; returns self.
        See :mod:`wager.recommender.changes` (errors, re-adding retired ids, refits)."""
        changes.add_items(self.scorer_, item_features)
        return self

    def retire_items(self, item_ids: Sequence[Any] | np.ndarray) -> Recommender:
        """Items (ids in the catalogue) never recommended again; :meth:`predict` still scores
        them; returns self. See :mod:`wager.recommender.changes`."""
        changes.retire_items(self.scorer_, item_ids)
        return self

    def known_users(self, user_ids: Sequence[Any]) -> np.ndarray:
        """(n,) bool: which users had training interactions (False = cold start)."""
        return self.scorer_.catalogue.known_users(user_ids)

    # ------------------------------------------------------------------ evaluation
    def oov_stds(self, rows: pd.DataFrame, max_rows: int = 5000) -> dict[str, Any]:
        """Per categorical field, the (real, cold) predictive stds of the first ``max_rows``
        rows (see :func:`wager.evaluation.oov.oov_stds`)."""
        scorer = self.scorer_
        batch = scorer.encode_rows(rows.iloc[:max_rows])

        def predict(b: Batch) -> Prediction:
            return self.chain_.transform(scorer.batch_prediction(b), self.chain_.covariates(b))

        return oov.oov_stds(scorer.encoder, batch, predict)

    def oov_std_ratios(self, rows: pd.DataFrame, max_rows: int = 5000) -> dict[str, float]:
        """{field key: median std(field set to OOV) / std(real value)} over ``rows`` (above 1:
        less certain without that feature; empty for deterministic models)."""
        return oov.oov_std_ratios(self.oov_stds(rows, max_rows))

    def evaluate(
        self,
        test: pd.DataFrame,
        *,
        show_progress: bool = False,
        plots_dir: str | Path | None = None,
    ) -> dict[str, Any]:
        """Every metric that applies, on a test table (keys as in the metrics JSON; see
        :mod:`wager.evaluation.report`). With ``plots_dir`` (and ``[uncertainty] plots``)
        the plots are written there and listed under "plots" ({name: PNG file name})."""
        self.scorer_  # noqa: B018 - NotFittedError before any work
        return report.evaluate(self, test, plots_dir)

    # ------------------------------------------------------------------ persistence
    def save(
        self,
        directory: str | Path,
        *,
        overwrite: bool = False,
        prepare: Callable[[Path], None] | None = None,
    ) -> Path:
        """Write the run folder whole or not at all (see :class:`~wager.runs.RunDirectory`):
        ``overwrite`` replaces a previous run there; ``prepare(folder)`` runs first inside
        the folder being written (e.g. an evaluation drawing its plots there)."""
        return persist.save(self, Path(directory), overwrite=overwrite, prepare=prepare)

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None) -> Recommender:
        """Read and verify a run folder written by :meth:`save` (its current catalogue
        included); ``device`` ("cpu" / "cuda" / "auto") overrides ``training.device``."""
        return persist.load(cls, Path(directory), device)
