"""Training orchestration of the facade: samplers, validators, ensembles, early stopping.

:func:`train_members` trains the M members of a run (one model, or a vmapped deep ensemble)
with the one trainer; the batches come from a sampler picked by the task:

- :class:`PointwiseSampler` (ratings, clicks): the rows themselves, with ids randomly set to
  OOV (``[model] oov_rate``) so the OOV rows learn what an unknown id looks like;
- :class:`RetrievalSampler` (two-tower): in-batch candidates with their log sampling
  probability, plus the whole catalogue (full softmax) or uniform extra negatives;
- :class:`ImplicitSampler` (NeuMF): K uniform negatives per positive, resampled when seen.

``[model] type = "als"`` needs no sampler: :func:`train_als` solves it by alternating least
squares over the positive rows (:mod:`wager.training.als`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch import Tensor

from wager.data.features import InteractionEncoder, categorical_keys
from wager.errors import data_error
from wager.evaluation import ranking
from wager.models.als import ImplicitALS
from wager.models.fields import Field
from wager.models.registry import softmax_kind
from wager.recommender.scoring import Batch, Scorer, to_tensors
from wager.recommender.spec import ModelSpec
from wager.training.als import ALSSettings, ImplicitData, fit_als
from wager.training.checkpoint import Checkpoint, EpochHook
from wager.training.history import History
from wager.training.trainer import StackedModel, train_stacked
from wager.uncertainty.cold_start import centre_oov, draw_known_rows
from wager.uncertainty.ensemble import bootstrap_weights, holdout_mask

Validator = Callable[[dict[str, Tensor]], Tensor]
# (member, user, item) score cells held at once by the per-epoch ranking validation (64 MiB
# of float32): users are scored in chunks of this many cells / (members * n_items)
VALIDATION_CELLS = 2**24


def gather(batch: Batch, rows: Tensor, prefix: str = "") -> Batch:
    """Rows of every tensor of ``batch``; keys optionally re-prefixed (e.g. "neg.")."""
    return {prefix + k: v[rows] for k, v in batch.items()}


@dataclass
class PointwiseSampler:
    """Row indices -> the encoded rows, each id field set to OOV with probability ``rate``.

    Attributes:
        rows: encoded training rows (n, ...).
        id_keys: the id fields that ``rate`` applies to.
        rate: probability of replacing an id by OOV (index 0), per row and field.
        generator: the random generator.
    """

    rows: Batch
    id_keys: list[str]
    rate: float
    generator: torch.Generator

    def __call__(self, idx: Tensor) -> Batch:
        batch = gather(self.rows, idx)
        if self.rate == 0:
            return batch
        for key in self.id_keys:  # cold-start practice: ids -> OOV (index 0) at random
            drop = torch.rand(idx.numel(), generator=self.generator) < self.rate
            batch[key] = batch[key].masked_fill(drop.to(batch[key].device), 0)
        return batch


@dataclass
class RetrievalSampler:
    """Row indices -> positives with log-Q terms, plus catalogue or sampled negatives.

    Every tensor it makes has B (rows), N (negatives) or n_items (the catalogue, full
    softmax only) rows: in sampled mode nothing is (B, n_items).

    Attributes:
        rows: encoded positive rows (n, ...).
        items: encoded catalogue items (n_items, ...).
        row_item: (n,) catalogue row of each positive's item.
        item_probability: (n_items,) share of positives per item (the in-batch sampling
            probability of a candidate).
        full_softmax: every catalogue item is a negative (``negatives`` is then unused).
        negatives: N, extra negatives per batch, drawn with replacement.
        generator: the random generator.
        negative_probability: (n_items,) probability q_i of drawing item i as an extra
            negative (e.g. popularity: count_i ** power, normalised), or None for uniform
            (q_i = 1 / n_items). A negative's ``"neg.item.logq"`` is log(N q_i), its
            expected count among the N draws, as the in-batch ``"item.logq"`` is
            log(B p_i).
    """

    rows: Batch
    items: Batch
    row_item: Tensor
    item_probability: Tensor
    full_softmax: bool
    negatives: int
    generator: torch.Generator
    negative_probability: Tensor | None = None

    def __post_init__(self) -> None:
        q = self.negative_probability
        # cumulative q on the CPU, float64 (the draws search it; 1-ulp-wide items still drawn)
        self.negative_cdf = None if q is None else torch.cumsum(q.double().cpu(), 0)

    def draw_negatives(self) -> tuple[Tensor, Tensor]:
        """((N,) int64 catalogue rows drawn, (N,) float32 log(N q) of each), on the CPU."""
        n_items, n = len(self.item_probability), self.negatives
        if self.negative_cdf is None:
            neg = torch.randint(0, n_items, (n,), generator=self.generator)
            return neg, torch.full((n,), math.log(n / n_items))
        cdf = self.negative_cdf
        u = torch.rand(n, generator=self.generator, dtype=torch.float64) * cdf[-1]
        neg = torch.searchsorted(cdf, u, right=True).clamp_max(n_items - 1)
        q = self.negative_probability
        assert q is not None
        return neg, torch.log(q.cpu()[neg].double() * n).float()

    def __call__(self, idx: Tensor) -> Batch:
        n_items = len(self.item_probability)
        device = self.item_probability.device
        batch = gather(self.rows, idx)
        # expected count of item i among the B in-batch candidates: B * count_i / n
        batch["item.logq"] = torch.log(self.item_probability[self.row_item[idx]] * idx.numel())
        if self.full_softmax:
            batch.update(gather(self.items, torch.arange(n_items, device=device), "neg."))
            batch["neg.item.logq"] = torch.zeros(n_items, device=device)
        elif self.negatives > 0:
            neg, logq = self.draw_negatives()
            batch.update(gather(self.items, neg.to(device), "neg."))
            batch["neg.item.logq"] = logq.to(device)
        return batch


@dataclass
class ImplicitSampler:
    """Row indices -> positives and K uniform negatives each, resampled (3 rounds) when the
    user has seen them.

    Attributes:
        rows: encoded positive rows (n, ...).
        items: encoded catalogue items (n_items, ...).
        row_user: (n,) seen-matrix row of each positive's user.
        seen_keys: sorted user * n_items + item keys of the seen pairs.
        n_items: catalogue size.
        negatives: K.
        generator: the random generator.
    """

    rows: Batch
    items: Batch
    row_user: Tensor
    seen_keys: Tensor
    n_items: int
    negatives: int
    generator: torch.Generator

    def is_seen(self, users: Tensor, cand: Tensor) -> Tensor:
        """(B, K) bool: has each user seen each candidate."""
        key = users.unsqueeze(1) * self.n_items + cand
        pos = torch.searchsorted(self.seen_keys, key).clamp_max(self.seen_keys.numel() - 1)
        return self.seen_keys[pos] == key

    def __call__(self, idx: Tensor) -> Batch:
        device = self.row_user.device
        batch = gather(self.rows, idx)
        users = self.row_user[idx]
        shape = (idx.numel(), self.negatives)
        neg = torch.randint(0, self.n_items, shape, generator=self.generator).to(device)
        for _ in range(3):
            bad = self.is_seen(users, neg)
            if not bool(bad.any()):
                break
            fresh = torch.randint(0, self.n_items, shape, generator=self.generator).to(device)
            neg = torch.where(bad, fresh, neg)
        batch.update(gather(self.items, neg, "neg."))
        return batch


def make_sampler(
    scorer: Scorer, train_t: Batch, fit_rows: pd.DataFrame, gen: torch.Generator
) -> Callable[[Tensor], Batch]:
    """The sampler of the scorer's task over the encoded training rows ``train_t``."""
    spec, cat = scorer.spec, scorer.catalogue
    s, m = spec.schema, spec.config.model
    device = scorer.device
    if spec.pointwise:
        ids = [k for k in (f"user.{s.user}", f"item.{s.item}") if k in train_t]
        return PointwiseSampler(train_t, ids, m.oov_rate, gen)
    items = scorer.encode_items()
    row_item = torch.tensor(cat.item_rows(fit_rows[s.item]).astype(np.int64), device=device)
    if spec.task == "retrieval":
        p_item = cat.item_counts / cat.item_counts.sum()
        q = None
        if m.negative_sampling == "popularity":
            weight = cat.item_counts**m.negative_power
            q = torch.as_tensor(weight / weight.sum(), dtype=torch.float32)
        return RetrievalSampler(
            train_t,
            items,
            row_item,
            torch.as_tensor(p_item, dtype=torch.float32, device=device),
            softmax_kind(m, cat.n_items) == "full",
            m.negatives,
            gen,
            q,
        )
    seen = cat.seen.tocoo()
    keys = np.sort(seen.row.astype(np.int64) * cat.n_items + seen.col.astype(np.int64))
    row_user = categorical_keys(fit_rows[s.user]).map(cat.user_index).to_numpy(dtype=np.int64)
    return ImplicitSampler(
        train_t,
        items,
        torch.tensor(row_user, device=device),
        torch.as_tensor(keys, device=device),
        cat.n_items,
        m.negatives,
        gen,
    )


def pointwise_validator(scorer: Scorer, rows: Batch, mask: Tensor | None) -> Validator:
    """params -> (M,) validation RMSE (ratings) or log-loss (clicks) on encoded ``rows``.

    Clicks with a mixture head ("mdn" / "ddn"): the impression-weighted squared error of
    each member's predicted mean CTR against the label, ``sum n (mean - ctr)^2 / sum n``
    (n = ``rows["impressions"]`` when present, else 1 per row).

    Args:
        scorer: the scorer of the model being trained.
        rows: encoded rows with "label" (n,) and optionally "impressions" (n,).
        mask: (M, n) bool with the same number of True per member: the rows each member
            is scored on (its own holdout), or None to score every member on all rows.
    """
    stack, spec = scorer.stack, scorer.spec
    head = spec.head
    assert head is not None
    inputs = {k: v for k, v in rows.items() if k != "weight"}
    per_member = mask is not None
    if mask is not None:
        # member m's held-out rows, gathered into a leading M dimension
        idx = torch.stack([torch.nonzero(mask[m]).squeeze(1) for m in range(len(mask))])
        inputs = {k: v[idx] for k, v in inputs.items()}
    labels = inputs.pop("label")
    row_w = inputs.get("impressions", torch.ones_like(labels))  # (n,) or (M, n)

    def pointwise(p: dict[str, Tensor]) -> Tensor:
        stack.train(False)
        try:
            with torch.no_grad():
                out = stack.call("forward", inputs, params=p, per_member=per_member)
                out = spec.task_output(out)  # the primary task decides early stopping
        finally:
            stack.train(True)
        if spec.task == "rating":
            means = torch.stack([head.mean(out[m]) for m in range(out.shape[0])])
            return (means - labels).square().mean(dim=-1).sqrt()
        if spec.mixture:
            means = torch.stack([head.mean(out[m]) for m in range(out.shape[0])])
            sq = (means - labels).square() * row_w
            return sq.sum(dim=-1) / row_w.sum(dim=-1).clamp_min(1e-12)
        return torch.nn.functional.binary_cross_entropy_with_logits(
            out, labels.expand_as(out), reduction="none"
        ).mean(dim=-1)

    return pointwise


def ranking_validator(
    scorer: Scorer,
    valid: pd.DataFrame,
    train_seen: sp.csr_matrix,
    cells: int = VALIDATION_CELLS,
) -> Validator:
    """params -> (M,) minus the validation NDCG@k / recall@k / top-k accuracy of each member
    (lower is better) on the positives of ``valid``, the training items excluded.

    Users are scored in chunks of at most ``cells`` (member, user, item) cells, each chunk
    reduced to its members' top-k lists before the next is scored, so memory does not grow
    with users x catalogue; the metric is the same for any ``cells``.
    """
    spec, cat, stack = scorer.spec, scorer.catalogue, scorer.stack
    s = spec.schema
    rows = positives(spec, valid)
    users, relevant = cat.relevant_lists(rows, s, threshold=None)
    metric = spec.config.training.validation_metric or f"ndcg@{spec.config.evaluation.k}"
    name, _, k_text = metric.partition("@")
    k = int(k_text)
    v_users = categorical_keys(rows[s.user]).to_numpy()
    v_items = cat.item_rows(rows[s.item])
    in_cat = ~np.isnan(v_items)
    chunk = max(1, cells // max(spec.members * cat.n_items, 1))

    def ranking_metric(p: dict[str, Tensor]) -> Tensor:
        stack.train(False)
        try:
            if name == "top_k_accuracy":
                beaten = scorer.n_beaten(v_users[in_cat], v_items[in_cat], p, per_member=True)
                return -(beaten < k).float().mean(dim=1)
            tops: list[list[np.ndarray]] = [[] for _ in range(spec.members)]
            for start in range(0, len(users), chunk):
                part = users[start : start + chunk]
                scores = scorer.member_scores(part, params=p)  # (M, U_chunk, I)
                exclude = cat.seen_rows(part, train_seen)
                for m in range(scores.shape[0]):
                    tops[m].append(ranking.top_k_from_scores(scores[m], k, exclude))
                del scores
        finally:
            stack.train(True)
        out = [
            -ranking.ranking_metrics(np.concatenate(top), relevant, k)[f"{name}@{k}"]
            for top in tops
        ]
        return torch.tensor(out)

    return ranking_metric


def validation_metric_name(spec: ModelSpec) -> str:
    """The name of the metric that early stopping watches (the validators above): e.g.
    "rmse" (ratings), "log_loss" (clicks), "ctr_mse" ("mdn" / "ddn"), "ndcg@10" (ranking)."""
    if spec.ranking:
        return spec.config.training.validation_metric or f"ndcg@{spec.config.evaluation.k}"
    if spec.task == "rating":
        return "rmse"
    return "ctr_mse" if spec.mixture else "log_loss"


def list_calibration_rows(
    scorer: Scorer, valid: pd.DataFrame, history: pd.DataFrame | None
) -> tuple[list[Tensor], list[list[np.ndarray]]]:
    """Retrieval / implicit: the validation users' catalogue score rows (their ``history``
    items at -inf; default the whole seen history) and positives, to fit the list relevance
    model on: at most 2,000 users and about 5e7 scored (user, item) cells."""
    spec, cat = scorer.spec, scorer.catalogue
    users, relevant = cat.relevant_lists(
        valid, spec.schema, spec.config.evaluation.relevance_threshold
    )
    cap = int(min(2000, max(50, 50_000_000 // max(cat.n_items, 1))))
    if len(users) > cap:
        pick = np.sort(np.random.default_rng(spec.config.seed).choice(len(users), cap, False))
        users, relevant = [users[i] for i in pick], [relevant[i] for i in pick]
    seen = None
    if history is not None:
        seen = cat.seen_matrix(history, spec.schema, spec.task == "click")
    rows, positives = [], []
    for start, part, scores in scorer.masked_score_chunks(users, seen) if users else ():
        rows.append(scores)
        positives.append(relevant[start : start + len(part)])
    return rows, positives


def fit_rows(spec: ModelSpec, train: pd.DataFrame) -> pd.DataFrame:
    """The training rows the model fits: the positives of ``train`` for ranking models,
    else ``train`` itself.

    Raises:
        DataError: there are none.
    """
    rows = positives(spec, train) if spec.ranking else train
    if len(rows) == 0:
        raise data_error(
            "empty_data",
            "the training split has no rows"
            + (" at or above model.positive_threshold" if len(train) else ""),
            source="train",
            fix="Check the split, any filters applied before fit() and model.positive_threshold.",
        )
    return rows


def positives(spec: ModelSpec, df: pd.DataFrame) -> pd.DataFrame:
    """Rows that count as positives for retrieval / implicit training."""
    thr = spec.config.model.positive_threshold
    if thr is None or spec.schema.label is None:
        return df
    return df[df[spec.schema.label].to_numpy(dtype=float) >= thr]


def train_members(
    scorer: Scorer,
    train_t: Batch,
    fit_rows: pd.DataFrame,
    train: pd.DataFrame,
    valid: pd.DataFrame | None,
    show_progress: bool = False,
    on_epoch: EpochHook | None = None,
    checkpoint: Checkpoint | None = None,
) -> History:
    """Train the scorer's stacked members together, in place; returns the training history.

    Gradient-trained models go through the trainer; ``[model] type = "als"`` through
    :func:`train_als` (``on_epoch`` / ``checkpoint``: that loop's hooks, see
    :mod:`wager.training.checkpoint`). ``[ensemble] fit = "separate"`` trains each member
    in its own loop instead (:mod:`wager.recommender.members`).

    Args:
        scorer: the scorer over the freshly built (untrained) members.
        train_t: encoded training rows (fit rows), "weight" (n,) optional.
        fit_rows: the training rows the model fits (positives for ranking models).
        train: every training row (what validation lists exclude).
        valid: validation rows for early stopping, or None.
        show_progress: draw a progress bar.
        on_epoch: called after each epoch with its report.
        checkpoint: where the loop keeps its state between epochs (and resumes from).
    """
    history, gen = train_stack(
        scorer, train_t, fit_rows, train, valid, show_progress, on_epoch, checkpoint
    )
    finish_cold_start(scorer, gen)
    return history


def train_stack(
    scorer: Scorer,
    train_t: Batch,
    fit_rows: pd.DataFrame,
    train: pd.DataFrame,
    valid: pd.DataFrame | None,
    show_progress: bool = False,
    on_epoch: EpochHook | None = None,
    checkpoint: Checkpoint | None = None,
    description: str | None = None,
) -> tuple[History, torch.Generator]:
    """The training loop of :func:`train_members` (all of the scorer's members in one loop,
    seeded by ``[run] seed``), without its cold-start step; returns the history and the
    loop's generator (its state after training: the cold-start draws continue it).

    ``train_t`` loses its "weight" key; ``description`` labels the progress bar (default
    the model's method).
    """
    spec, stack = scorer.spec, scorer.stack
    config = spec.config
    n_rows = len(fit_rows)
    seed = config.seed if config.seed is not None else 0
    gen = torch.Generator().manual_seed(seed)
    ens = config.ensemble
    device = scorer.device
    row_w = train_t.pop("weight", torch.ones(n_rows, device=device))
    member_w = bootstrap_weights(row_w, spec.members, ens is not None and ens.bootstrap, gen)
    member_w = member_w.to(device)
    validate: Validator | None = None
    holdout = ens.holdout if ens is not None else 0.0
    if holdout > 0:
        held_out = holdout_mask(n_rows, spec.members, holdout, gen).to(device)
        member_w = member_w * (~held_out)
        validate = pointwise_validator(scorer, train_t, held_out)
    elif valid is not None and len(valid):
        if spec.pointwise:
            valid_t = to_tensors(scorer.encoder.transform(valid), device)
            valid_t.pop("weight", None)
            validate = pointwise_validator(scorer, valid_t, None)
        else:
            # validation ranks the validation items: exclude the training rows only
            train_seen = scorer.catalogue.seen_matrix(train, spec.schema, spec.task == "click")
            validate = ranking_validator(scorer, valid, train_seen)

    if isinstance(stack.model, ImplicitALS):
        history = train_als(scorer, train_t, member_w, validate, on_epoch, checkpoint)
    else:
        make_batch = make_sampler(scorer, train_t, fit_rows, gen)
        warn_sampled_softmax(spec, scorer.catalogue.n_items)

        def batch_losses(p: dict[str, Tensor], idx: Tensor) -> Tensor:
            idx = idx.to(device)
            return stack.call_weighted("loss", make_batch(idx), member_w[:, idx], params=p)

        history = run_loop(
            scorer, batch_losses, n_rows, validate, gen, show_progress, on_epoch, checkpoint,
            description,
        )  # fmt: skip
    return history, gen


def run_loop(
    scorer: Scorer,
    batch_losses: Callable[[dict[str, Tensor], Any], Tensor],
    n_rows: int,
    validate: Validator | None,
    gen: torch.Generator,
    show_progress: bool,
    on_epoch: EpochHook | None,
    checkpoint: Checkpoint | None,
    description: str | None = None,
    batches: Callable[[int], Any] | None = None,
) -> History:
    """:func:`~wager.training.trainer.train_stacked` over the scorer's stacked parameters
    with the spec's metric name and direction, dropout on while it runs (see there for
    the arguments)."""
    spec, stack = scorer.spec, scorer.stack
    stack.train(True)
    history = train_stacked(
        stack.params,
        batch_losses,
        n_rows,
        spec.config.training,
        validate=validate,
        generator=gen,
        show_progress=show_progress,
        description=description or spec.method,
        on_epoch=on_epoch,
        checkpoint=checkpoint,
        metric_name=validation_metric_name(spec),
        higher_is_better=spec.ranking,
        batches=batches,
    )
    stack.train(False)
    return history


def finish_cold_start(scorer: Scorer, gen: torch.Generator) -> None:
    """After training, ``[uncertainty] cold_start = "population"``: centre the OOV rows of
    the learned id tables and draw the known rows that stand in for unknown values (with
    ``gen``); nothing otherwise."""
    spec = scorer.spec
    config = spec.config
    if config.uncertainty.cold_start != "population":
        return
    s = spec.schema
    learned = (
        frozenset({f"user.{s.user}", f"item.{s.item}"})
        if config.model.oov_rate > 0
        else frozenset()
    )
    fields = fields_of(scorer.encoder)
    centre_oov(scorer.stack.params, fields, learned)
    scorer.population_picks = draw_known_rows(
        fields, spec.members, config.uncertainty.population_draws, gen
    )


def train_als(
    scorer: Scorer,
    train_t: Batch,
    member_w: Tensor,
    validate: Validator | None,
    on_epoch: EpochHook | None = None,
    checkpoint: Checkpoint | None = None,
) -> History:
    """Fit the stacked :class:`~wager.models.als.ImplicitALS` members by ALS, in place.

    Args:
        scorer: the scorer over the freshly built members.
        train_t: encoded positive rows (the user and item id keys are read).
        member_w: (M, n) row weights of each member (1, the schema's weight column, times
            the Poisson bootstrap draw); a pair's r_ui is the sum over its duplicate rows.
        validate: params -> (M,) minus the validation ranking metric, or None.
        on_epoch: called after each iteration.
        checkpoint: where the loop keeps its state (resume).
    """
    spec, stack = scorer.spec, scorer.stack
    model = stack.model
    assert isinstance(model, ImplicitALS)
    m, t = spec.config.model, spec.config.training
    names = (f"model.{model.table_names[0]}", f"model.{model.table_names[1]}")
    data = ImplicitData.from_pairs(
        train_t[model.user_key],
        train_t[model.item_key],
        member_w,
        stack.params[names[0]].shape[1],
        stack.params[names[1]].shape[1],
    )
    return fit_als(
        stack.params,
        names,
        data,
        ALSSettings(m.alpha, m.reg, m.cg_steps, t.epochs, t.patience, m.reg_exponent),
        validate=validate,
        metric_name=validation_metric_name(spec),
        on_epoch=on_epoch,
        checkpoint=checkpoint,
    )


def warn_sampled_softmax(spec: ModelSpec, n_items: int) -> None:
    """Warn (on stderr) when ``[model] full_softmax = true`` trains by sampled softmax
    because the catalogue is larger than ``full_softmax_max_items``."""
    m = spec.config.model
    if m.type != "two_tower" or not m.full_softmax or softmax_kind(m, n_items) == "full":
        return
    extra = f" + {m.negatives} {m.negative_sampling} negatives per batch" if m.negatives else ""
    warnings.warn(
        f"[model] full_softmax = true, but the catalogue has {n_items:,} items, more than "
        f"[model] full_softmax_max_items = {m.full_softmax_max_items:,}: training by sampled "
        f"softmax (in-batch negatives{extra}, log-Q corrected; metrics_['softmax'] = "
        "'sampled'). Raise full_softmax_max_items to train the exact softmax (its time and "
        "memory grow with the catalogue), or set negatives (e.g. 1024) for more negatives",
        stacklevel=2,
    )


def fields_of(encoder: InteractionEncoder) -> list[Field]:
    """The model fields of a fitted interaction encoder."""
    return [Field(k, kind, size) for k, kind, size in encoder.fields()]  # type: ignore[arg-type]


def build_stack(
    spec: ModelSpec,
    fields: list[Field],
    label_mean: float,
    device: torch.device,
    n_items: int | None = None,
) -> StackedModel:
    """The M freshly initialised members of the run (seeded by ``[run] seed``) for a
    catalogue of ``n_items`` items (None: unknown, e.g. a loaded run)."""
    return StackedModel(
        lambda: spec.build_model(fields, label_mean, n_items),
        spec.members,
        spec.config.seed,
        device,
    )


def fit_metrics(spec: ModelSpec, history: History, n_items: int) -> dict[str, Any]:
    """The facade's ``metrics_`` after fit: training seconds, seconds per epoch, epochs,
    best epoch per member, data-parallel processes and their gradient-sum seconds, and for
    two-tower models ``"softmax"``: "full" or "sampled" (see
    :func:`wager.models.registry.softmax_kind`)."""
    seconds = history.epoch_seconds
    out: dict[str, Any] = {
        "train_seconds": history.seconds,
        "epoch_seconds": float(np.mean(seconds)) if seconds else 0.0,
        "epochs": len(history.train_loss),
        "best_epoch": history.best_epoch,
        "processes": history.processes,
        "reduce_seconds": history.reduce_seconds,
    }
    if history.member_seconds:  # [ensemble] fit = "separate": each member's loop time
        out["member_seconds"] = history.member_seconds
    if spec.config.model.type == "two_tower":
        out["softmax"] = softmax_kind(spec.config.model, n_items)
    return out
