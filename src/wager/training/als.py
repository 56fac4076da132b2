"""Alternating least squares for implicit feedback, batched over rows and ensemble members.

The objective of each member (Hu, Koren & Volinsky 2008), over every (user, item) cell of
the factor tables X (n_users, d) and Y (n_items, d):

    sum_ui c_ui (p_ui - x_u . y_i)^2 + reg (|X|^2 + |Y|^2),

with r_ui >= 0 the summed row weight (play count) of the pair (0 = not observed),
p_ui = 1 where r_ui > 0 else 0, and the confidence c_ui = 1 + alpha r_ui (1 off the
observed pairs). A half-step solves, for every user at once,

    (Y^T Y + Y^T (C_u - I) Y + reg I) x_u = Y^T C_u p_u,

from the shared Gram matrix Y^T Y and the user's observed pairs only; then the same for
the items against X. Each system is solved by ``cg_steps`` conjugate-gradient steps
warm-started from the current factors (Takacs, Pilaszy & Tikk 2011), or exactly by a
Cholesky factorisation with ``cg_steps = 0``. An iteration is a user half-step then an
item half-step. A CG step treats every row of every member at once: the members' pair
patterns form one block-diagonal sparse CSR matrix, so A v is one sampled dense product
(x_u . y_i at the pairs) and one sparse-dense product; exact solves go by blocks of rows.
Every half-step lowers the objective (exact solves minimise it; CG steps from the current
factors only decrease the quadratic they work on).

Parameterisation against ``implicit.als.AlternatingLeastSquares`` (version 0.7, CPU):

- confidence: implicit multiplies the matrix it is given by its ``alpha`` and uses
  c_ui = alpha_implicit * value_ui on the stored entries (1 elsewhere). On 0/1 data,
  wager's ``alpha = a`` is implicit's ``alpha = 1 + a``; on counts, give implicit the
  matrix 1 + a r with ``alpha = 1``. Both then minimise the same objective;
- ``regularization`` is the same unscaled ``reg`` on every row (not scaled by counts);
- ``cg_steps`` = 3 and the warm start are implicit's (``use_cg=True``); the user
  half-step comes first, as in implicit;
- initialisation: implicit draws U(0, 0.01) entries, wager U(0, init_std) (the model's
  ``[model] init_std``; 0.01 is implicit's start). From the same start each half-step
  agrees to float32 rounding, and the objective after 10 iterations to 1e-4.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import Tensor

from wager.training.checkpoint import Checkpoint, EpochHook, EpochReport
from wager.training.history import History

Params = dict[str, Tensor]
# gathered floats per block of rows of an exact solve (pairs x members x dim^2)
CHUNK_FLOATS = 1 << 24
_TINY = 1e-20  # implicit's stopping rule: squared residual norm below this


@dataclass(frozen=True)
class ImplicitData:
    """The observed pairs of M members, one entry per distinct pair, sorted by row.

    Attributes:
        rows: (nnz,) int64 row (user) index of each pair, non-decreasing.
        cols: (nnz,) int64 column (item) index.
        weights: (M, nnz) float r_ui of each member (0: that member does not observe it).
        n_rows: rows of the table being solved (users).
        n_cols: rows of the other table (items).
    """

    rows: Tensor
    cols: Tensor
    weights: Tensor
    n_rows: int
    n_cols: int

    @classmethod
    def from_pairs(
        cls, rows: Tensor, cols: Tensor, weights: Tensor, n_rows: int, n_cols: int
    ) -> ImplicitData:
        """Sum the weights of duplicate (row, col) pairs and sort by row, then column.

        Args:
            rows: (n,) int64 user index of each interaction.
            cols: (n,) int64 item index.
            weights: (M, n) or (n,) non-negative weights (play counts; bootstrap weights).
            n_rows: user table rows (indices < n_rows).
            n_cols: item table rows.
        """
        w = weights if weights.ndim == 2 else weights.unsqueeze(0)
        keys = rows.long() * n_cols + cols.long()
        uniq, inverse = torch.unique(keys, return_inverse=True)
        summed = torch.zeros(w.shape[0], uniq.numel(), dtype=w.dtype, device=w.device)
        summed.index_add_(1, inverse, w)
        return cls(uniq // n_cols, uniq % n_cols, summed, n_rows, n_cols)

    def transpose(self) -> ImplicitData:
        """The same pairs seen from the columns (items), sorted by column."""
        order = torch.argsort(self.cols * self.n_rows + self.rows)
        return ImplicitData(
            self.cols[order], self.rows[order], self.weights[:, order], self.n_cols, self.n_rows
        )

    @cached_property
    def indptr(self) -> Tensor:
        """(n_rows + 1,) int64 CSR row pointers of the pairs."""
        return torch.searchsorted(self.rows, torch.arange(self.n_rows + 1, device=self.rows.device))

    @cached_property
    def _stacked(self) -> tuple[Tensor, Tensor]:
        """CSR row pointers and columns of the block-diagonal (M n_rows, M n_cols) matrix
        holding every member's copy of the pattern (values in ``weights.flatten()`` order)."""
        n_members, nnz = self.weights.shape
        offsets = torch.arange(n_members, device=self.rows.device)
        crow = (self.indptr[:-1].unsqueeze(0) + nnz * offsets.unsqueeze(1)).flatten()
        crow = torch.cat([crow, crow.new_full((1,), n_members * nnz)])
        cols = (self.cols.unsqueeze(0) + self.n_cols * offsets.unsqueeze(1)).flatten()
        return crow, cols

    def matrix(self, values: Tensor) -> Tensor:
        """The (M n_rows, M n_cols) sparse CSR block-diagonal matrix of (M, nnz) ``values``:
        member m's block holds its values at the pattern's (row, col) cells."""
        crow, cols = self._stacked
        n_members = values.shape[0]
        with warnings.catch_warnings():  # "sparse CSR support is in beta": a CSR product
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support")
            return torch.sparse_csr_tensor(
                crow,
                cols,
                values.flatten(),
                size=(n_members * self.n_rows, n_members * self.n_cols),
                check_invariants=False,
            )

    def products(self, x: Tensor, y: Tensor) -> Tensor:
        """(M, nnz) x_u . y_i at every pair of each member (a sampled dense product).

        Args:
            x: (M, n_rows, d) row factors.
            y: (M, n_cols, d) column factors.
        """
        n_members, _, d = x.shape
        pattern = self.matrix(torch.ones_like(self.weights, dtype=x.dtype))
        out = torch.sparse.sampled_addmm(
            pattern, x.reshape(-1, d), y.reshape(-1, d).T, beta=0.0, alpha=1.0
        )
        return out.values().reshape(n_members, -1)

    def times(self, values: Tensor, y: Tensor) -> Tensor:
        """(M, n_rows, d): for each row u, sum over its pairs of values_ui y_i (per member).

        Args:
            values: (M, nnz) a value per pair and member.
            y: (M, n_cols, d) column factors.
        """
        n_members, _, d = y.shape
        out = self.matrix(values.to(y.dtype)) @ y.reshape(-1, d)
        return out.reshape(n_members, self.n_rows, d)

    def chunks(self, per_pair: int) -> list[tuple[int, int, int, int]]:
        """(row start, row stop, pair start, pair stop) blocks of whole rows, each holding
        about ``CHUNK_FLOATS / per_pair`` pairs (a row with more pairs is a block alone)."""
        ptr = self.indptr.cpu().numpy()
        budget = max(1, CHUNK_FLOATS // max(per_pair, 1))
        out, start = [], 0
        while start < self.n_rows:
            stop = int(np.searchsorted(ptr, ptr[start] + budget, side="right")) - 1
            stop = min(max(stop, start + 1), self.n_rows)
            stop = min(stop, start + budget)  # the (rows, d, d) systems of exact solves
            out.append((start, stop, int(ptr[start]), int(ptr[stop])))
            start = stop
        return out


def row_regularisation(data: ImplicitData, alpha: float, reg: float, exponent: float) -> Tensor:
    """(M, n_rows) the L2 weight of each row of each member.

    With ``exponent`` = 0 every row takes ``reg`` (implicit's rule). Otherwise a row's weight
    grows with the confidence mass it carries in the objective, m_u = n_cols + alpha sum_i r_ui
    (every cell's confidence summed), as ``reg (m_u / mean_u m_u) ** exponent`` (frequency-
    scaled regularisation, Rendle et al. 2022, "Revisiting the performance of iALS on item
    recommendation benchmarks"; scaled by the mean so that ``reg`` keeps its size).
    """
    n_members = data.weights.shape[0]
    dtype = data.weights.dtype if data.weights.is_floating_point() else torch.float32
    if exponent == 0.0:
        return torch.full((n_members, data.n_rows), reg, dtype=dtype, device=data.rows.device)
    mass = torch.zeros(n_members, data.n_rows, dtype=dtype, device=data.rows.device)
    mass.index_add_(1, data.rows, data.weights.to(dtype))
    mass = data.n_cols + alpha * mass
    return reg * (mass / mass.mean(dim=1, keepdim=True)).pow(exponent)


def solve_rows(
    x: Tensor, y: Tensor, data: ImplicitData, alpha: float, reg: Tensor, cg_steps: int
) -> Tensor:
    """One half-step: new factors of every row of ``x`` given the other side ``y``.

    Args:
        x: (M, n_rows, d) current factors (the CG warm start).
        y: (M, n_cols, d) fixed factors of the other side.
        data: the pairs, sorted by row of ``x``.
        alpha: confidence slope: c = 1 + alpha r on observed pairs.
        reg: (M, n_rows) L2 weight added to each row's system diagonal
            (:func:`row_regularisation`).
        cg_steps: conjugate-gradient steps per row; 0 = exact (Cholesky) solve.

    Returns:
        (M, n_rows, d) new factors (a new tensor).

    Raises:
        ValueError: an exact solve met a singular system (reg = 0 and too few items).
    """
    n_members, _, d = x.shape
    gram = y.transpose(1, 2) @ y
    reg = reg.to(y.dtype)
    r = data.weights.to(y.dtype)
    extra = alpha * r  # c - 1 on the observed pairs, 0 elsewhere
    if cg_steps > 0:
        rhs = data.times((1.0 + extra) * (r > 0), y)  # Y^T C_u p_u
        return _conjugate_gradient(x, gram, reg, y, data, extra, rhs, cg_steps)
    out = x.clone()
    for r0, r1, s0, s1 in data.chunks(n_members * d * d):
        local = data.rows[s0:s1] - r0
        yk = y[:, data.cols[s0:s1]]  # (M, n, d)
        chunk_rhs = torch.zeros(n_members, r1 - r0, d, dtype=y.dtype, device=y.device)
        chunk_rhs.index_add_(
            1, local, ((1.0 + extra[:, s0:s1]) * (r[:, s0:s1] > 0))[..., None] * yk
        )
        out[:, r0:r1] = _exact(gram, reg[:, r0:r1], yk, extra[:, s0:s1], local, chunk_rhs)
    return out


def _apply(
    v: Tensor, gram: Tensor, reg: Tensor, y: Tensor, data: ImplicitData, extra: Tensor
) -> Tensor:
    """(M, n_rows, d) A v per row: (Y^T Y + reg_u I) v_u + sum_i (c_ui - 1) (y_i . v_u) y_i."""
    return v @ gram + reg.unsqueeze(-1) * v + data.times(data.products(v, y) * extra, y)


def _conjugate_gradient(
    x: Tensor,
    gram: Tensor,
    reg: Tensor,
    y: Tensor,
    data: ImplicitData,
    extra: Tensor,
    rhs: Tensor,
    steps: int,
) -> Tensor:
    """(M, n_rows, d) after ``steps`` CG steps from ``x`` on A x = rhs, per row (implicit's
    rule: a row whose squared residual falls below 1e-20 stops there)."""
    x = x.clone()
    r = rhs - _apply(x, gram, reg, y, data, extra)
    p = r.clone()
    rs_old = (r * r).sum(-1)  # (M, n_rows)
    active = rs_old >= _TINY
    for _ in range(steps):
        ap = _apply(p, gram, reg, y, data, extra)
        curvature = (p * ap).sum(-1)
        step = torch.where(active, rs_old / curvature.where(active, 1.0), 0.0).unsqueeze(-1)
        x = x + step * p
        r = r - step * ap
        rs_new = (r * r).sum(-1)
        active = active & (rs_new >= _TINY)
        beta = torch.where(active, rs_new / rs_old.where(rs_old > 0, 1.0), 0.0).unsqueeze(-1)
        p = r + beta * p
        rs_old = torch.where(active, rs_new, rs_old)
    return x


def _exact(
    gram: Tensor, reg: Tensor, yk: Tensor, extra: Tensor, local: Tensor, rhs: Tensor
) -> Tensor:
    """(M, B, d) exact solutions: Cholesky of each row's d x d system (``reg``: (M, B))."""
    n_members, n_rows, d = rhs.shape
    outer = (extra.unsqueeze(-1) * yk).unsqueeze(-1) * yk.unsqueeze(-2)  # (M, n, d, d)
    eye = torch.eye(d, dtype=gram.dtype, device=gram.device)
    a = gram.unsqueeze(1) + reg[..., None, None] * eye  # (M, B, d, d)
    a = a.reshape(n_members, n_rows, d * d)
    a = a.index_add_(1, local, outer.reshape(n_members, -1, d * d))
    chol, info = torch.linalg.cholesky_ex(a.reshape(n_members, n_rows, d, d))
    if bool((info != 0).any()):
        raise ValueError(
            "ALS met a singular least-squares system: set [model] reg > 0 (e.g. 0.01), or "
            "[model] cg_steps >= 1"
        )
    return torch.cholesky_solve(rhs.unsqueeze(-1), chol).squeeze(-1)


def objective(
    x: Tensor, y: Tensor, data: ImplicitData, alpha: float, reg_x: Tensor, reg_y: Tensor
) -> Tensor:
    """(M,) the ALS objective of each member (see the module docstring), a sum over every
    cell of the tables: sum_all s^2 + sum_observed [c (1 - s)^2 - s^2]
    + sum_u reg_u |x_u|^2 + sum_i reg_i |y_i|^2 (``reg_x``: (M, n_users), ``reg_y``:
    (M, n_items), from :func:`row_regularisation`).
    """
    dense = ((x.transpose(1, 2) @ x) * (y.transpose(1, 2) @ y)).sum((1, 2))
    total = dense + (reg_x.to(x.dtype) * x.square().sum(-1)).sum(-1)
    total = total + (reg_y.to(y.dtype) * y.square().sum(-1)).sum(-1)
    s = data.products(x, y)
    r = data.weights.to(x.dtype)
    c = 1.0 + alpha * r
    return total + torch.where(r > 0, c * (1.0 - s).square() - s.square(), 0.0).sum(-1)


@dataclass(frozen=True)
class ALSSettings:
    """What the ALS loop needs besides the data.

    Attributes:
        alpha: confidence slope (>= 0): c = 1 + alpha r.
        reg: L2 weight (>= 0; > 0 for exact solves).
        reg_exponent: frequency scaling of ``reg`` per row (>= 0; 0 = the same ``reg`` on
            every row, as implicit; see :func:`row_regularisation`).
        cg_steps: CG steps per half-step; 0 = exact Cholesky solves.
        epochs: the most iterations (``[training] epochs``).
        patience: iterations without a validation improvement before stopping.
    """

    alpha: float
    reg: float
    cg_steps: int = 3
    epochs: int = 15
    patience: int = 2
    reg_exponent: float = 0.0


@dataclass
class _State:
    """The loop's state between iterations (what a checkpoint keeps)."""

    x: Tensor
    y: Tensor
    best_x: Tensor
    best_y: Tensor
    best_metric: Tensor
    best_mean: float
    best_mean_epoch: int
    stale: int
    iteration: int
    history: History

    def to_dict(self) -> dict[str, Any]:
        return {
            "x": self.x.cpu(),
            "y": self.y.cpu(),
            "best_x": self.best_x.cpu(),
            "best_y": self.best_y.cpu(),
            "best_metric": self.best_metric.cpu(),
            "best_mean": self.best_mean,
            "best_mean_epoch": self.best_mean_epoch,
            "stale": self.stale,
            "iteration": self.iteration,
            "history": self.history.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], device: torch.device) -> _State:
        h = d["history"]
        return cls(
            d["x"].to(device),
            d["y"].to(device),
            d["best_x"].to(device),
            d["best_y"].to(device),
            d["best_metric"].clone(),
            float(d["best_mean"]),
            int(d["best_mean_epoch"]),
            int(d["stale"]),
            int(d["iteration"]),
            History(
                list(h["train_loss"]),
                [list(v) for v in h["valid_metric"]],
                list(h["best_epoch"]),
                float(h["seconds"]),
                list(h["epoch_seconds"]),
            ),
        )


def fit_als(
    params: Params,
    tables: tuple[str, str],
    data: ImplicitData,
    settings: ALSSettings,
    *,
    validate: Callable[[Params], Tensor] | None = None,
    metric_name: str = "",
    on_epoch: EpochHook | None = None,
    checkpoint: Checkpoint | None = None,
) -> History:
    """Fit the user and item tables of ``params`` in place by ALS, with early stopping.

    Args:
        params: stacked parameters, name -> (M, ...) tensors; ``params[tables[0]]`` is the
            (M, n_users, d) user table, ``params[tables[1]]`` the (M, n_items, d) item
            table. Both end holding each member's best iteration's factors.
        tables: the (user, item) table names.
        data: the observed pairs (rows = users, cols = items) with per-member weights.
        settings: alpha, reg, CG steps, iterations, patience.
        validate: params -> (M,) metric, lower is better (e.g. minus NDCG@10), run after
            each iteration; without it the last iteration is kept.
        metric_name: what the metric is, for the epoch reports (e.g. "ndcg@10").
        on_epoch: called with an :class:`EpochReport` after each iteration.
        checkpoint: the loop saves its state there after each iteration and, when it holds
            one, continues from it (the same factors as an uninterrupted run).

    Returns:
        the history: objective per iteration (mean over members), validation metrics,
        each member's best (0-based) iteration, seconds.
    """
    user_name, item_name = tables
    x0, y0 = params[user_name].detach(), params[item_name].detach()
    n_members = x0.shape[0]
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        st = _State.from_dict(saved, x0.device)
    else:
        st = _State(
            x0.clone(),
            y0.clone(),
            x0.clone(),
            y0.clone(),
            torch.full((n_members,), math.inf),
            math.inf,
            0,
            0,
            0,
            History(best_epoch=[0] * n_members),
        )
    data_t = data.transpose()
    reg_x = row_regularisation(data, settings.alpha, settings.reg, settings.reg_exponent)
    reg_y = row_regularisation(data_t, settings.alpha, settings.reg, settings.reg_exponent)
    work = dict(params)
    start = time.perf_counter() - st.history.seconds
    while st.iteration < settings.epochs and st.stale < settings.patience:
        t0 = time.perf_counter()
        st.x = solve_rows(st.x, st.y, data, settings.alpha, reg_x, settings.cg_steps)
        st.y = solve_rows(st.y, st.x, data_t, settings.alpha, reg_y, settings.cg_steps)
        loss = float(objective(st.x, st.y, data, settings.alpha, reg_x, reg_y).mean())
        st.history.train_loss.append(loss)
        st.history.epoch_seconds.append(time.perf_counter() - t0)
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"ALS diverged at iteration {st.iteration + 1} (objective {loss}): check the "
                "row weights for huge or non-finite values, or raise [model] reg"
            )
        metric = _track(st, work, tables, validate)
        st.iteration += 1
        st.history.seconds = time.perf_counter() - start
        if checkpoint is not None:
            checkpoint.save(st.to_dict())
        if on_epoch is not None:
            on_epoch(
                EpochReport(
                    st.iteration,
                    settings.epochs,
                    loss,
                    metric,
                    metric_name,
                    time.perf_counter() - t0,
                    st.best_mean_epoch,
                    best_metric=st.best_mean if math.isfinite(st.best_mean) else None,
                    higher_is_better=True,  # ALS validates by a ranking metric, minimised negated
                )
            )
    with torch.no_grad():
        params[user_name].copy_(st.best_x)
        params[item_name].copy_(st.best_y)
    st.history.seconds = time.perf_counter() - start
    return st.history


def _track(
    st: _State, work: Params, tables: tuple[str, str], validate: Callable[[Params], Tensor] | None
) -> float | None:
    """Validate the iteration just finished and keep each member's best factors in ``st``;
    returns the mean metric over members (None without validation)."""
    epoch = st.iteration
    if validate is None:
        st.best_x, st.best_y = st.x, st.y
        st.history.best_epoch = [epoch] * st.x.shape[0]
        st.best_mean_epoch = epoch + 1
        return None
    work[tables[0]], work[tables[1]] = st.x, st.y
    with torch.no_grad():
        metric = validate(work).detach().cpu().float()
    st.history.valid_metric.append(metric.tolist())
    if not bool(torch.isfinite(metric).all()):
        raise FloatingPointError(
            f"the validation metric of ALS is not finite at iteration {epoch + 1}: "
            f"{metric.tolist()}"
        )
    improved = metric < st.best_metric - 1e-6
    if bool(improved.any()):
        st.stale = 0
        st.best_metric = torch.where(improved, metric, st.best_metric)
        keep = improved.to(st.x.device).view(-1, 1, 1)
        st.best_x = torch.where(keep, st.x, st.best_x)
        st.best_y = torch.where(keep, st.y, st.best_y)
        for m in torch.nonzero(improved).flatten().tolist():
            st.history.best_epoch[m] = epoch
    else:
        st.stale += 1
    mean = float(metric.mean())
    if mean < st.best_mean:
        st.best_mean, st.best_mean_epoch = mean, epoch + 1
    return mean
