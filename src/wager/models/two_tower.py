"""Two-tower retrieval model trained with a (sampled) softmax over candidate items.

score(u, i) = <user_tower(u), item_tower(i)> / temperature. The loss treats every row's
observed item as the positive class among candidate columns: the other rows' items
(in-batch negatives) and/or extra negatives the caller supplies under ``"neg.item.*"``. With
``in_batch_negatives=False`` and the whole catalogue as the extra negatives, it is the exact
(full) softmax. The model never samples by itself. With ``hard_negatives=n`` each row keeps
only its n highest-scoring negatives (TensorFlow Recommenders' ``HardNegativeMining``).

Retrieval scores rank items for a user; they are not probabilities or ratings.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from wager.models.fields import Field
from wager.models.losses import sampled_softmax_loss, weighted_mean
from wager.models.towers import Tower, check_rate

NEG_PREFIX = "neg."


class TwoTower(nn.Module):
    """User tower and item tower whose dot product scores (user, item) pairs.

    Batch keys read by :meth:`loss`:

    - ``"user.<field>"`` (B, ...), ``"item.<field>"`` (B, ...): the positive pairs.
    - ``"neg.item.<field>"`` (N, ...), optional: N extra negatives shared by every row.
    - ``"item.logq"`` (B,) and ``"neg.item.logq"`` (N,) float32: log-probability that the
      sampler / batch draws each item; required when ``logq_correction=True`` (for
      ``"neg.item.logq"`` only when negatives are present).
    - ``item_id_key`` (B,) and ``"neg." + item_id_key`` (N,) int64 when
      ``remove_accidental_hits=True``.
    - ``"weight"`` (B,) float32, optional (used when ``weights`` is None).

    Args:
        user_fields: encoded user fields (keys "user.*").
        item_fields: encoded item fields (keys "item.*").
        dim: embedding dimension of every field.
        hidden: MLP layer widths of both towers (the last is the output dimension).
        dropout: dropout rate in both towers.
        init_std: std of the embedding initialisation.
        temperature: divides the scores; below 1 sharpens the softmax.
        logq_correction: subtract each candidate's sampling log-probability from its logit
            (Yi et al. 2019), correcting the popularity bias of in-batch / sampled negatives.
            Set False for uniform or full-catalogue negatives.
        in_batch_negatives: use the other rows' items as negatives.
        remove_accidental_hits: mask candidate columns whose ``item_id_key`` equals the
            row's positive (other than the positive itself); OOV id 0 never matches.
        item_id_key: batch key of the item id field, e.g. "item.movie_id".
        normalize: L2-normalise both towers' outputs (cosine scores / temperature).
        reduction: "mean" = weighted mean over rows; "sum" = weighted sum (as the
            TensorFlow Recommenders retrieval tutorial does).
        item_bias: add a learned per-item bias (a 1-wide tower over the item fields) to
            every score: score = <u, v> / temperature + b_item (captures popularity).
        user_dropout: dropout rate on the user vector only (regularises user factors).
        reg: L2 weight on the embeddings in play (see :meth:`_penalty`), added to the loss.
        hard_negatives: 0 = off; n >= 1 = each row's softmax keeps its positive and only
            its n highest-scoring negative columns (TensorFlow Recommenders'
            ``HardNegativeMining``), ranked after the log-Q correction and with accidental
            hits and absent rows removed, as TFRS orders the three; see
            :func:`hard_negative_softmax_loss`. Fewer valid negatives than n: all are kept.

    Example:
        >>> m = TwoTower([Field("user.user_id", "index", 4)], [Field("item.item_id", "index", 5)],
        ...              dim=3, logq_correction=False)
        >>> batch = {"user.user_id": torch.tensor([1, 2, 3]),
        ...          "item.item_id": torch.tensor([1, 2, 2])}
        >>> m(batch).shape, m.loss(batch).shape
        (torch.Size([3]), torch.Size([]))
    """

    def __init__(
        self,
        user_fields: list[Field],
        item_fields: list[Field],
        dim: int = 32,
        hidden: tuple[int, ...] = (),
        dropout: float = 0.0,
        init_std: float = 0.05,
        temperature: float = 1.0,
        logq_correction: bool = True,
        in_batch_negatives: bool = True,
        remove_accidental_hits: bool = True,
        item_id_key: str = "item.item_id",
        normalize: bool = False,
        reduction: Literal["mean", "sum"] = "mean",
        item_bias: bool = False,
        user_dropout: float = 0.0,
        reg: float = 0.0,
        hard_negatives: int = 0,
    ) -> None:
        super().__init__()
        check_rate("user_dropout", user_dropout)
        if not reg >= 0:
            raise ValueError(f"reg must be >= 0, got {reg!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        if isinstance(hard_negatives, bool) or not isinstance(hard_negatives, int):
            raise ValueError(f"hard_negatives must be an integer (0 = off), got {hard_negatives!r}")
        if hard_negatives < 0:
            raise ValueError(f"hard_negatives must be >= 0 (0 = off), got {hard_negatives!r}")
        self.user_tower = Tower(user_fields, dim, hidden, dropout, init_std, normalize)
        self.item_tower = Tower(item_fields, dim, hidden, dropout, init_std, normalize)
        self.temperature = float(temperature)
        self.dropout = float(dropout)
        self.logq_correction = logq_correction
        self.in_batch_negatives = in_batch_negatives
        self.remove_accidental_hits = remove_accidental_hits
        self.item_id_key = item_id_key
        self.reduction = reduction
        self.out_dim = self.user_tower.out_dim
        # a per-item bias is a 1-wide tower over the item fields (ids and features)
        self.item_bias = Tower(item_fields, 1, (), 0.0, init_std) if item_bias else None
        self.user_dropout = float(user_dropout)
        self.user_drop = nn.Dropout(user_dropout) if user_dropout > 0 else None
        self.reg = float(reg)
        self.hard_negatives = hard_negatives

    def user_embedding(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, out_dim) user vectors from the ``"user.*"`` keys (user dropout when training)."""
        u = self.user_tower(batch)
        return self.user_drop(u) if self.user_drop is not None else u

    def _user_side(self, u: Tensor) -> Tensor:
        """User vectors as they enter the logit: a constant temperature column when the
        model has item biases, so that <[u, T], [v, b]> / T = <u, v> / T + b."""
        if self.item_bias is None:
            return u
        return torch.cat([u, torch.full_like(u[..., :1], self.temperature)], dim=-1)

    def _item_side(self, v: Tensor, batch: dict[str, Tensor], prefix: str) -> Tensor:
        """Item vectors as they enter the logit: [v, item bias] when the model has biases."""
        if self.item_bias is None:
            return v
        return torch.cat([v, self.item_bias(batch, prefix=prefix)], dim=-1)

    def user_factors(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, d') user side of the score: <user_factors(u), item_factors(i)> = forward."""
        return self._user_side(self.user_embedding(batch)) / self.temperature

    def item_factors(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, d') item side of the score (the vector, then the bias when there is one)."""
        return self._item_side(self.item_embedding(batch), batch, "item.")

    def item_embedding(self, batch: dict[str, Tensor], prefix: str = "item.") -> Tensor:
        """(..., out_dim) item vectors from the keys under ``prefix`` (leading shape kept)."""
        return self.item_tower(batch, prefix=prefix)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """(B,) scores <user, item> / temperature of the batch's (user, item) pairs."""
        u = self._user_side(self.user_embedding(batch))
        v = self._item_side(self.item_embedding(batch), batch, "item.")
        return (u * v).sum(-1) / self.temperature

    def _logq(self, batch: dict[str, Tensor], key: str) -> Tensor:
        if key not in batch:
            raise ValueError(
                f"TwoTower(logq_correction=True) needs the batch key '{key}' (log-probability "
                "that the sampler draws each item); have the batch builder supply it, or "
                "construct the model with logq_correction=False"
            )
        return batch[key]

    def _ids(self, batch: dict[str, Tensor], key: str) -> Tensor:
        if key not in batch:
            item_keys = sorted(k for k in batch if k.startswith("item."))
            raise ValueError(
                f"TwoTower(remove_accidental_hits=True) needs the item id under '{key}' "
                f"(batch item keys: {item_keys}); set item_id_key to the item id field, "
                "or construct the model with remove_accidental_hits=False"
            )
        return batch[key]

    def loss(self, batch: dict[str, Tensor], weights: Tensor | None = None) -> Tensor:
        """Softmax cross-entropy of each row's positive item among the candidates.

        Candidate columns: the B in-batch items (the row's positive on the diagonal) when
        ``in_batch_negatives``, else the positive alone; then the N extra negatives when
        ``"neg.item.*"`` keys are present. A row with weight 0 counts as absent: it adds no
        loss and its item is not an in-batch negative for other rows.

        With in-batch negatives the (B, B + N) logit matrix is never built: columns holding
        the same item are identical, so they are merged into one column per distinct item
        whose logit gains log(multiplicity), and rows of the same user share one row of
        scores; see :meth:`_grouped_losses`. The value and gradients equal the column-by-column
        softmax up to float rounding. The column-by-column path still runs when dropout is
        active (rows of one item get different dropout draws) and under ``torch.func``
        transforms of the batch itself (``torch.unique`` has no batching rule); parameters
        vmapped over ensemble members with a shared batch keep the grouped path.
        With ``hard_negatives`` > 0 the column-by-column path always runs: the top-n
        selection is over columns, which the grouped and per-user paths merge.

        Args:
            batch: see the class docstring for the keys read.
            weights: (B,) non-negative row weights; None uses batch["weight"] when present,
                else ones.

        Returns:
            scalar: weighted mean (``reduction="mean"``) or weighted sum of the rows'
            cross-entropies, in nats.

        Raises:
            ValueError: no negatives at all, or a key the settings need is missing.
        """
        if weights is None:
            weights = batch.get("weight")
        has_neg = self.item_tower.has_inputs(batch, NEG_PREFIX + "item.")
        if not self.in_batch_negatives and not has_neg:
            raise ValueError(
                "TwoTower has no negatives: in_batch_negatives=False and the batch has no "
                f"'neg.item.*' keys ({self.item_tower.input_keys(NEG_PREFIX + 'item.')}); "
                "supply negatives or set in_batch_negatives=True"
            )
        if self.hard_negatives > 0:  # top-n per row over columns: the dense path only
            per_row = self._dense_losses(batch, weights, has_neg)
        elif self.in_batch_negatives and self._can_group(batch, has_neg):
            per_row = self._grouped_losses(batch, weights, has_neg)
        elif not self.in_batch_negatives and self._can_group_users(batch):
            per_row = self._shared_negative_losses(batch)
        else:
            per_row = self._dense_losses(batch, weights, has_neg)
        if self.reduction == "sum":
            loss = per_row.sum() if weights is None else (per_row * weights).sum()
        else:
            loss = weighted_mean(per_row, weights)
        if self.reg > 0:
            loss = loss + self.reg * self._penalty(batch, weights, has_neg)
        return loss

    def _penalty(self, batch: dict[str, Tensor], weights: Tensor | None, has_neg: bool) -> Tensor:
        """L2 of the embeddings in play: weighted mean over rows of ||u||^2 + ||v||^2 (+ the
        squared item bias), plus the mean over the extra negatives of ||v||^2 (+ bias^2)."""
        u = self.user_tower(batch)
        v = self._item_side(self.item_tower(batch), batch, "item.")
        pen = weighted_mean(u.square().sum(-1) + v.square().sum(-1), weights)
        if has_neg:
            neg = NEG_PREFIX + "item."
            vn = self._item_side(self.item_tower(batch, prefix=neg), batch, neg)
            pen = pen + vn.square().sum(-1).mean()
        return pen

    def _can_group(self, batch: dict[str, Tensor], has_neg: bool) -> bool:
        """Whether :meth:`_grouped_losses` gives exactly the column-by-column loss here."""
        if self.training and (self.dropout > 0 or self.user_dropout > 0):
            return False  # each row of an item draws its own dropout mask: columns differ
        sources = ["item.", NEG_PREFIX + "item."] if has_neg else ["item."]
        user_keys = self.user_tower.input_keys()
        if user_keys[0] in batch and batch[user_keys[0]].shape[0] == 0:
            return False  # an empty batch has no groups
        keys = [*user_keys, self.item_id_key, NEG_PREFIX + self.item_id_key]
        for prefix in sources:
            keys += [*self.item_tower.input_keys(prefix), prefix + "logq"]
        return not any(k in batch and _is_functorch_wrapped(batch[k]) for k in keys)

    def _can_group_users(self, batch: dict[str, Tensor]) -> bool:
        """Whether rows can share their user's scores against the shared negatives."""
        if self.training and self.dropout > 0:
            return False  # the item tower draws dropout per candidate row
        keys = [*self.user_tower.input_keys(), self.item_id_key, NEG_PREFIX + self.item_id_key]
        keys += [*self.item_tower.input_keys(NEG_PREFIX + "item."), NEG_PREFIX + "item.logq"]
        first = batch[self.user_tower.input_keys()[0]]
        if first.shape[0] == 0:
            return False
        return not any(k in batch and _is_functorch_wrapped(batch[k]) for k in keys)

    def _shared_negative_losses(self, batch: dict[str, Tensor]) -> Tensor:
        """(B,) cross-entropies against the N shared negatives only (no in-batch columns),
        with the (U, N) score matrix computed once per distinct user (full-catalogue softmax).

        Row i (user a, positive logit p_i) has lse_i = log(sum_{j not a hit} e^{c_aj} + e^{p_i}).
        With L_a = logsumexp_j c_aj and h_i = sum over hit columns (same id > 0) of
        e^{c_aj - L_a}: lse_i = L_a + log1p(e^{p_i - L_a} - h_i); when the negatives are the
        whole catalogue (the positive's own column equals p_i) the log1p term is exactly 0.
        User dropout, when training, draws one mask per distinct user.
        """
        user_keys = self.user_tower.input_keys()
        user_group, user_first = _group([c for k in user_keys for c in _key_columns([batch[k]])])
        u = self._user_side(self.user_embedding({k: batch[k][user_first] for k in user_keys}))
        neg = NEG_PREFIX + "item."
        vn = self._item_side(self.item_embedding(batch, prefix=neg), batch, neg)
        v = self._item_side(self.item_embedding(batch), batch, "item.")
        u = u / self.temperature
        positive = (u[user_group] * v).sum(-1)
        offset = torch.zeros(vn.shape[0], dtype=u.dtype, device=u.device)
        if self.logq_correction:
            offset = -self._logq(batch, NEG_PREFIX + "item.logq")
            positive = positive - self._logq(batch, "item.logq")
        lse = block_logsumexp(u, vn, offset, LSE_CELLS)  # (U,), never (U, N) at once
        rel = positive - lse[user_group]
        hits = torch.zeros_like(rel)
        if self.remove_accidental_hits:
            ids = self._ids(batch, self.item_id_key)
            neg_ids = self._ids(batch, NEG_PREFIX + self.item_id_key)
            order = torch.argsort(neg_ids, stable=True)
            sorted_ids = neg_ids[order]
            lo = torch.searchsorted(sorted_ids, ids, side="left")
            hi = torch.searchsorted(sorted_ids, ids, side="right")
            if bool((hi - lo <= 1).all()):
                # each positive matches at most one negative column (e.g. the catalogue):
                # that one score, from the vectors, instead of the (U, N) matrix
                col = order[lo.clamp_max(order.numel() - 1)]
                score = (u[user_group] * vn[col]).sum(-1) + offset[col]
                hit = torch.exp(score - lse[user_group])
                hits = torch.where(hi > lo, hit, torch.zeros_like(hit))
            else:
                scores = u @ vn.T + offset  # (U, N): several hits per row, rare
                e = torch.exp(scores[:, order] - lse.unsqueeze(1))
                prefix = torch.cat([torch.zeros_like(e[:, :1]), e.cumsum(1)], dim=1)
                hits = prefix[user_group, hi] - prefix[user_group, lo]
            hits = torch.where(ids > 0, hits, torch.zeros_like(hits))
        inner = (torch.exp(rel) - hits).clamp_min(-1.0 + 1e-6)
        return lse[user_group] + torch.log1p(inner) - positive

    def _dense_losses(
        self, batch: dict[str, Tensor], weights: Tensor | None, has_neg: bool
    ) -> Tensor:
        """(B,) per-row cross-entropies from the full (B, B + N) or (B, 1 + N) logit matrix
        (over the positive and the row's ``hard_negatives`` best negatives when that is set)."""
        u = self._user_side(self.user_embedding(batch))
        v = self._item_side(self.item_embedding(batch), batch, "item.")
        n_rows = u.shape[0]
        rows = torch.arange(n_rows, device=u.device)
        logits: list[Tensor] = []
        logq: list[Tensor] = []
        invalid: list[Tensor] = []
        if self.in_batch_negatives:
            logits.append(u @ v.T / self.temperature)
            diagonal = rows.unsqueeze(1) == rows.unsqueeze(0)
            mask = torch.zeros_like(diagonal)
            if self.logq_correction:
                logq.append(self._logq(batch, "item.logq").expand(n_rows, n_rows))
            if self.remove_accidental_hits:
                ids = self._ids(batch, self.item_id_key)
                mask = mask | ((ids.unsqueeze(1) == ids.unsqueeze(0)) & (ids > 0).unsqueeze(0))
            if weights is not None:
                mask = mask | (weights == 0).unsqueeze(0)
            invalid.append(mask & ~diagonal)
            positive = rows
        else:
            logits.append(((u * v).sum(-1) / self.temperature).unsqueeze(1))
            if self.logq_correction:
                logq.append(self._logq(batch, "item.logq").unsqueeze(1))
            invalid.append(torch.zeros(n_rows, 1, dtype=torch.bool, device=u.device))
            positive = torch.zeros_like(rows)
        if has_neg:
            vn = self._item_side(
                self.item_embedding(batch, prefix=NEG_PREFIX + "item."),
                batch,
                NEG_PREFIX + "item.",
            )
            logits.append(u @ vn.T / self.temperature)
            n_neg = vn.shape[0]
            if self.logq_correction:
                logq.append(self._logq(batch, NEG_PREFIX + "item.logq").expand(n_rows, n_neg))
            mask = torch.zeros(n_rows, n_neg, dtype=torch.bool, device=u.device)
            if self.remove_accidental_hits:
                ids = self._ids(batch, self.item_id_key)
                neg_ids = self._ids(batch, NEG_PREFIX + self.item_id_key)
                mask = (ids.unsqueeze(1) == neg_ids.unsqueeze(0)) & (neg_ids > 0).unsqueeze(0)
            invalid.append(mask)
        z = torch.cat(logits, dim=1)
        q = torch.cat(logq, dim=1) if logq else None
        if self.hard_negatives > 0:
            return hard_negative_softmax_loss(
                z, positive, q, torch.cat(invalid, dim=1), self.hard_negatives
            )
        return sampled_softmax_loss(z, positive, q, torch.cat(invalid, dim=1))

    def _grouped_losses(
        self, batch: dict[str, Tensor], weights: Tensor | None, has_neg: bool
    ) -> Tensor:
        """(B,) per-row cross-entropies with in-batch negatives, one column per distinct item.

        Candidate columns (B in-batch rows, then N extra negatives) are grouped by what their
        score depends on: the item id and the item tower's inputs. A group t holds copies c
        of one item (score s_at for user a) that differ at most in their logq, so together
        they enter the softmax once as ``s_at + m_t`` with the log-mass
        ``m_t = log(sum_c present_c exp(-logq_c))`` (present_c: 0 for an in-batch row of
        weight 0, else 1; logq = 0 without the correction). Users are grouped by the user
        tower's inputs, and scores are computed on (U distinct users, T distinct items).

        Row i (user a, group t, positive logit p_i = s_at - logq_i) sees every column but a
        block: with accidental-hit removal and an id > 0, the groups sharing its id
        (contiguous, the id being the first grouping key) are masked and its own column is
        added back once; otherwise nothing is masked, and its own column is added once more
        when row i has weight 0 (its diagonal is never masked). So

            lse_i = log(sum_{groups g outside the block} exp(s_ag + m_g) + own_i exp(p_i)).

        When every id's block is one group (ids with identical tower inputs) the sum outside
        the block is the user's float64 total minus the block's own float32 term; the two
        differ by the copies' logq only, not by score, so no cancellation can grow with the
        scores. Otherwise (one id, different tower inputs) the sums come from prefix and
        suffix sums along the user's columns (no subtraction at all).
        """
        user_keys = self.user_tower.input_keys()
        n_rows = batch[user_keys[0]].shape[0]
        sources = ["item.", NEG_PREFIX + "item."] if has_neg else ["item."]
        logq, ids, item_group, item_first = self._item_groups(batch, sources)
        user_group, user_first = _group([c for k in user_keys for c in _key_columns([batch[k]])])
        # (U, d') user vectors / temperature, (T, d') item vectors: one tower pass per group
        u, v = self._group_vectors(batch, sources, user_first, item_first, n_rows)
        present = (
            torch.ones(n_rows, dtype=u.dtype, device=u.device)
            if weights is None
            else (weights != 0).to(u.dtype)
        )
        ones = torch.ones(item_group.shape[0] - n_rows, dtype=u.dtype, device=u.device)
        offset = _group_log_mass(torch.cat([present, ones]), logq, item_group, len(item_first))
        logits = u @ v.T + offset  # (U, T)
        top = logits.detach().amax(dim=1, keepdim=True)
        e = torch.exp(logits - top)
        own_group = item_group[:n_rows]
        positive = (u[user_group] * v[own_group]).sum(-1)
        if logq is not None:
            positive = positive - logq[:n_rows]
        hit = ids[:n_rows] > 0 if ids is not None else torch.zeros_like(own_group, dtype=torch.bool)
        # own column added back: once (hits removed), else once more when the row is absent
        own_weight = torch.where(hit, 1.0, 1.0 - present)
        masked = torch.finfo(u.dtype).min / 100.0
        own_logit = positive + torch.where(own_weight > 0, own_weight.log(), masked)
        start, stop = _own_blocks(ids, item_first)
        start = torch.where(hit, start[own_group], own_group)  # no hit: empty block
        stop = torch.where(hit, stop[own_group], own_group)
        if bool((stop - start <= 1).all()):
            total = e.sum(dim=1, dtype=torch.float64)[user_group]
            block = torch.where(hit, e[user_group, own_group].double(), 0.0)
            rest = (total - block).clamp_min(0.0).to(u.dtype)
        else:
            before = torch.nn.functional.pad(e, (1, 0)).cumsum(1)  # [:, s]: groups < s
            after = torch.nn.functional.pad(e, (0, 1)).flip(1).cumsum(1).flip(1)  # >= s
            rest = before[user_group, start] + after[user_group, stop]
        row_top = top[user_group, 0]
        shift = torch.maximum(row_top, own_logit.detach())
        inside = rest * torch.exp(row_top - shift) + torch.exp(own_logit - shift)
        lse = shift + inside.clamp_min(torch.finfo(inside.dtype).tiny).log()
        return lse - positive

    def _item_groups(
        self, batch: dict[str, Tensor], sources: list[str]
    ) -> tuple[Tensor | None, Tensor | None, Tensor, Tensor]:
        """Group the B + N candidate columns by id and item-tower inputs (in that order).

        Args:
            batch: the batch.
            sources: the item prefixes of the candidates: in-batch items, then negatives.

        Returns:
            ((B + N,) logq of each candidate or None; (B + N,) int64 ids or None (without
            accidental-hit removal); (B + N,) int64 group of each candidate; (T,) int64
            first candidate of each group).
        """
        item_keys = [self.item_tower.input_keys(prefix) for prefix in sources]
        # grouping keys of the B + N candidate columns: id first (same-id groups contiguous)
        columns: list[Tensor] = []
        logq = None
        if self.logq_correction:
            logq = torch.cat([self._logq(batch, prefix + "logq") for prefix in sources])
        ids = None
        if self.remove_accidental_hits:
            id_keys = [self.item_id_key, NEG_PREFIX + self.item_id_key][: len(sources)]
            ids = torch.cat([self._ids(batch, key) for key in id_keys])
            columns += _key_columns([ids])
        for j, key in enumerate(item_keys[0]):
            if ids is None or key != self.item_id_key:
                columns += _key_columns([batch[keys[j]] for keys in item_keys])
        item_group, item_first = _group(columns)
        return logq, ids, item_group, item_first

    def _group_vectors(
        self,
        batch: dict[str, Tensor],
        sources: list[str],
        user_first: Tensor,
        item_first: Tensor,
        n_rows: int,
    ) -> tuple[Tensor, Tensor]:
        """((U, d') user vectors / temperature, (T, d') item vectors): one tower pass per
        distinct user, then per distinct item; score = u @ v.T.

        Args:
            batch: the batch.
            sources: the item prefixes: in-batch items (rows < ``n_rows``), then negatives.
            user_first: (U,) int64 first row of each user group.
            item_first: (T,) int64 first candidate of each item group.
            n_rows: B, the in-batch rows.
        """
        user_keys = self.user_tower.input_keys()
        item_keys = [self.item_tower.input_keys(prefix) for prefix in sources]
        u = self._user_side(self.user_tower({k: batch[k][user_first] for k in user_keys}))
        from_batch = item_first < n_rows
        parts: list[Tensor] = []
        order: list[Tensor] = []
        for prefix, keys, chosen, offset in zip(
            sources, item_keys, (from_batch, ~from_batch), (0, n_rows), strict=False
        ):
            rows = item_first[chosen] - offset
            if rows.numel():
                sub = {k: batch[k][rows] for k in keys}
                parts.append(self._item_side(self.item_tower(sub, prefix=prefix), sub, prefix))
                order.append(chosen.nonzero().squeeze(1))
        v = torch.cat(parts)[torch.argsort(torch.cat(order))]
        return u / self.temperature, v


# (users, items) score cells per block of :func:`block_logsumexp` (16 MiB of float32)
LSE_CELLS = 2**22


class _BlockLogSumExp(torch.autograd.Function):
    """logsumexp over the columns of u @ v.T + offset, block by block, exact gradients."""

    generate_vmap_rule = True

    @staticmethod
    def forward(u: Tensor, v: Tensor, offset: Tensor, cells: int) -> Tensor:
        step = max(1, cells // max(u.shape[0], 1))
        top = torch.full(u.shape[:1], -torch.inf, dtype=u.dtype, device=u.device)
        total = torch.zeros_like(top)
        for start in range(0, v.shape[0], step):
            block = u @ v[start : start + step].T + offset[start : start + step]
            new_top = torch.maximum(top, block.amax(dim=1))
            scale = torch.where(torch.isfinite(top), torch.exp(top - new_top), 0.0)
            total = total * scale + torch.exp(block - new_top.unsqueeze(1)).sum(dim=1)
            top = new_top
        return top + total.log()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        u, v, offset, cells = inputs
        ctx.save_for_backward(u, v, offset, output)
        ctx.cells = cells

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        u, v, offset, lse = ctx.saved_tensors
        step = max(1, ctx.cells // max(u.shape[0], 1))
        grad_u = torch.zeros_like(u)
        grad_v: list[Tensor] = []
        grad_offset: list[Tensor] = []
        for start in range(0, v.shape[0], step):
            vb = v[start : start + step]
            # d lse_a / d score_aj = softmax_aj; times the incoming gradient of lse_a
            p = torch.exp(u @ vb.T + offset[start : start + step] - lse.unsqueeze(1))
            p = p * grad.unsqueeze(1)
            grad_u = grad_u + p @ vb
            grad_v.append(p.T @ u)
            grad_offset.append(p.sum(dim=0))
        return grad_u, torch.cat(grad_v), torch.cat(grad_offset), None


def block_logsumexp(u: Tensor, v: Tensor, offset: Tensor, cells: int = LSE_CELLS) -> Tensor:
    """Per row of ``u``: logsumexp over the items of ``u @ v.T + offset``, computed over
    blocks of items so that at most ``cells`` (row, item) scores are held at once, forward
    and backward (the backward recomputes each block's softmax); exact, not sampled.

    Args:
        u: (U, d) query vectors (already divided by the temperature).
        v: (N, d) item vectors.
        offset: (N,) added to every row's scores (e.g. minus the log sampling probability).
        cells: scores per block (>= 1); the blocks hold ``max(1, cells // U)`` items.

    Returns:
        (U,) logsumexp_j (u_a . v_j + offset_j); gradients reach u, v and offset.

    Example:
        >>> u, v = torch.randn(3, 2), torch.randn(5, 2)
        >>> torch.allclose(block_logsumexp(u, v, torch.zeros(5), cells=3),
        ...                torch.logsumexp(u @ v.T, dim=1))
        True
    """
    out = _BlockLogSumExp.apply(u, v, offset, cells)
    assert isinstance(out, Tensor)
    return out


def hard_negative_softmax_loss(
    logits: Tensor,
    positive: Tensor,
    logq: Tensor | None,
    invalid: Tensor | None,
    n: int,
) -> Tensor:
    """Softmax cross-entropy over each row's positive and its n highest-scoring negatives.

    TensorFlow Recommenders' retrieval task in its order: the log-Q correction first, then
    the masked columns (accidental hits, absent rows) set to a large negative number, then
    ``HardNegativeMining``: per row the positive column and the n largest other columns
    are kept, the rest leave the softmax. A masked column is chosen only when a row has
    fewer than n valid negatives, and then adds exp(-huge) = 0. With n >= C - 1 every
    column is kept and this equals :func:`~wager.models.losses.sampled_softmax_loss`.
    Gradients reach only the kept columns.

    Args:
        logits: (B, C) scores (already divided by the temperature).
        positive: (B,) int64 column of each row's positive.
        logq: (C,) or (B, C) log sampling probabilities to subtract, or None.
        invalid: (B, C) bool, True where a column is no negative for that row (never the
            positive's own column), or None.
        n: negatives kept per row (>= 1).

    Returns:
        (B,) ``logsumexp(positive, top-n negatives) - positive``, in nats.

    Example:
        >>> # corrected logits [0, 3, 1, 2], positive column 0, n = 2: keeps 3 and 2
        >>> out = hard_negative_softmax_loss(torch.tensor([[0.0, 3, 1, 2]]), torch.tensor([0]),
        ...                                  None, None, 2)
        >>> torch.allclose(out, torch.log(1 + torch.exp(torch.tensor(3.0)) + torch.exp(
        ...     torch.tensor(2.0))))
        True
    """
    if logq is not None:
        logits = logits - logq
    if invalid is not None:
        logits = logits.masked_fill(invalid, torch.finfo(logits.dtype).min / 100.0)
    pos = logits.gather(-1, positive.unsqueeze(-1))  # (B, 1)
    columns = torch.arange(logits.shape[-1], device=logits.device)
    # the positive's own column can never be one of the negatives
    negatives = logits.masked_fill(columns == positive.unsqueeze(-1), -torch.inf)
    kept = negatives.topk(min(n, logits.shape[-1] - 1), dim=-1).values  # (B, n')
    return torch.logsumexp(torch.cat([pos, kept], dim=-1), dim=-1) - pos.squeeze(-1)


def _is_functorch_wrapped(t: Tensor) -> bool:
    """Whether ``t`` is batched (vmap) or wrapped by another ``torch.func`` transform."""
    return bool(torch._C._functorch.is_functorch_wrapped_tensor(t))


def _group_log_mass(present: Tensor, logq: Tensor | None, group: Tensor, n_groups: int) -> Tensor:
    """(T,) log(sum over a group's candidates of present * exp(-logq)), computed shifted by
    the group's largest -logq; a group without a present candidate gets a huge negative.

    Args:
        present: (B + N,) 1.0 for a candidate that counts, 0.0 for an absent in-batch row.
        logq: (B + N,) log sampling probability of each candidate, or None (all 0).
        group: (B + N,) int64 group of each candidate.
        n_groups: T.
    """
    neg = -logq if logq is not None else torch.zeros_like(present)
    floor = torch.finfo(present.dtype).min / 100.0
    top = torch.full((n_groups,), floor, dtype=present.dtype, device=present.device)
    top = top.scatter_reduce(0, group, torch.where(present > 0, neg, floor), "amax")
    mass = torch.zeros_like(top).index_add(0, group, present * torch.exp(neg - top[group]))
    return torch.where(mass > 0, top + mass.clamp_min(torch.finfo(mass.dtype).tiny).log(), floor)


def _own_blocks(ids: Tensor | None, item_first: Tensor) -> tuple[Tensor, Tensor]:
    """Each item group's masked block of groups: [start, stop) in group order.

    Without ids (no accidental-hit removal) the block of group t is t alone. With ids, the
    groups sharing an id > 0 (contiguous, as the id is the first grouping key) form one
    block; groups with id 0 (unknown) stay alone.

    Args:
        ids: (B + N,) int64 candidate ids, or None.
        item_first: (T,) int64 first candidate of each group.

    Returns:
        ((T,) int64 start, (T,) int64 stop) of each group's block.
    """
    n_groups = item_first.shape[0]
    start = torch.arange(n_groups, device=item_first.device)
    stop = start + 1
    if ids is not None:
        group_ids = ids[item_first]
        block_key = torch.where(group_ids > 0, group_ids, -1 - start)
        _, block, sizes = torch.unique_consecutive(
            block_key, return_inverse=True, return_counts=True
        )
        stop = sizes.cumsum(0)[block]
        start = stop - sizes[block]
    return start, stop


def _key_columns(parts: list[Tensor]) -> list[Tensor]:
    """int64 columns that identify rows: the parts (one field, several sources) stacked.

    Args:
        parts: tensors shaped (R_k, ...) of one field, e.g. its in-batch and its negative
            values; trailing widths may differ (bags, padded with 0 to the widest).

    Returns:
        list of (sum R_k,) int64 columns; floats are compared by their bit patterns.
    """
    flat = []
    for part in parts:
        if part.is_floating_point():
            bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[part.element_size()]
            part = part.contiguous().view(bits)
        flat.append(part.reshape(part.shape[0], -1).long())
    width = max(f.shape[1] for f in flat)
    flat = [torch.nn.functional.pad(f, (0, width - f.shape[1])) for f in flat]
    return list(torch.cat(flat).unbind(1))


def _group(columns: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Group equal rows of a table given as columns (one 1-D ``torch.unique`` per column).

    Args:
        columns: (R,) int64 columns.

    Returns:
        ((R,) int64 group of each row, numbered in lexicographic order of the columns;
        (G,) int64 first row of each group).
    """
    inverse: Tensor | None = None
    n_groups = 1
    for col in columns:
        values, col_inverse = torch.unique(col, return_inverse=True)
        if inverse is None:
            inverse, n_groups = col_inverse, values.numel()
        else:
            values, inverse = torch.unique(
                inverse * values.numel() + col_inverse, return_inverse=True
            )
            n_groups = values.numel()
    assert inverse is not None
    rows = torch.arange(inverse.shape[0], device=inverse.device)
    first = torch.full((n_groups,), inverse.shape[0], dtype=torch.long, device=inverse.device)
    return inverse, first.scatter_reduce(0, inverse, rows, "amin")
