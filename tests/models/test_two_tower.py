"""TwoTower: losses against a NumPy log-softmax reference; the grouped in-batch softmax against a
column-by-column reference (values and gradients, under vmap too); a block-structure fixture."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.func import functional_call, stack_module_state, vmap

from wager.models.fields import Field
from wager.models.two_tower import TwoTower, block_logsumexp

N_USERS, N_ITEMS = 5, 6  # embedding rows incl. OOV 0


def _model(**kwargs) -> TwoTower:
    torch.manual_seed(0)
    m = TwoTower(
        [Field("user.user_id", "index", N_USERS)],
        [Field("item.item_id", "index", N_ITEMS)],
        dim=2,
        **kwargs,
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        m.user_tower.embedding.vectors["user__user_id"].weight.copy_(
            torch.randn(N_USERS, 2, generator=g)
        )
        m.item_tower.embedding.vectors["item__item_id"].weight.copy_(
            torch.randn(N_ITEMS, 2, generator=g)
        )
    return m


def _tables(m: TwoTower) -> tuple[np.ndarray, np.ndarray]:
    u = m.user_tower.embedding.vectors["user__user_id"].weight.detach().double().numpy()
    v = m.item_tower.embedding.vectors["item__item_id"].weight.detach().double().numpy()
    return u, v


def _ce(z: np.ndarray, pos: np.ndarray, invalid: np.ndarray) -> np.ndarray:
    # reference: cross-entropy with masked columns removed from the softmax
    z = np.where(invalid, -np.inf, z)
    lse = np.log(np.exp(z).sum(1))
    return lse - z[np.arange(len(z)), pos]


BATCH = {
    "user.user_id": torch.tensor([1, 2, 3]),
    "item.item_id": torch.tensor([1, 2, 1]),  # rows 0 and 2 share item 1
    "item.logq": torch.log(torch.tensor([0.5, 0.2, 0.5])),
}


def test_in_batch_loss_with_logq_and_accidental_hits_matches_numpy():
    m = _model(temperature=0.5)
    u, v = _tables(m)
    users, items = np.array([1, 2, 3]), np.array([1, 2, 1])
    z = u[users] @ v[items].T / 0.5 - np.log([0.5, 0.2, 0.5])[None, :]
    invalid = np.zeros((3, 3), dtype=bool)
    invalid[0, 2] = invalid[2, 0] = True  # same item, not the row's own column
    ref = _ce(z, np.arange(3), invalid).mean()
    np.testing.assert_allclose(m.loss(BATCH).item(), ref, rtol=1e-5)
    # forward: <u, v> / temperature
    np.testing.assert_allclose(
        m(BATCH).detach().numpy(), (u[users] * v[items]).sum(1) / 0.5, rtol=1e-5
    )


def test_in_batch_plus_shared_negatives_matches_numpy():
    m = _model()
    u, v = _tables(m)
    batch = {
        **BATCH,
        "neg.item.item_id": torch.tensor([2, 4]),
        "neg.item.logq": torch.log(torch.tensor([0.1, 0.3])),
    }
    users, items, negs = np.array([1, 2, 3]), np.array([1, 2, 1]), np.array([2, 4])
    cand = np.concatenate([items, negs])
    logq = np.log([0.5, 0.2, 0.5, 0.1, 0.3])
    z = u[users] @ v[cand].T - logq
    invalid = (items[:, None] == cand[None, :]) & ~np.eye(3, 5, dtype=bool)
    ref = _ce(z, np.arange(3), invalid)
    np.testing.assert_allclose(m.loss(batch).item(), ref.mean(), rtol=1e-5)
    # reduction="sum": the sum of the rows' losses (TFRS tutorial convention)
    m_sum = _model(reduction="sum")
    np.testing.assert_allclose(m_sum.loss(batch).item(), ref.sum(), rtol=1e-5)


def test_full_softmax_over_the_catalogue_matches_numpy():
    m = _model(in_batch_negatives=False, logq_correction=False)
    u, v = _tables(m)
    catalogue = np.arange(1, N_ITEMS)  # every known item, positives included
    batch = {
        "user.user_id": BATCH["user.user_id"],
        "item.item_id": BATCH["item.item_id"],
        "neg.item.item_id": torch.from_numpy(catalogue),
    }
    users, items = np.array([1, 2, 3]), np.array([1, 2, 1])
    # exact softmax over the catalogue: -log p(positive | user)
    z = u[users] @ v[catalogue].T
    ref = np.log(np.exp(z).sum(1)) - (u[users] * v[items]).sum(1)
    np.testing.assert_allclose(m.loss(batch).item(), ref.mean(), rtol=1e-5)


def test_oov_items_are_never_accidental_hits():
    m = _model(logq_correction=False)
    u, v = _tables(m)
    batch = {"user.user_id": torch.tensor([1, 2]), "item.item_id": torch.tensor([0, 0])}
    z = u[[1, 2]] @ v[[0, 0]].T
    ref = _ce(z, np.arange(2), np.zeros((2, 2), dtype=bool)).mean()
    np.testing.assert_allclose(m.loss(batch).item(), ref, rtol=1e-5)


def test_zero_weight_row_is_absent_from_loss_and_negatives():
    m = _model()
    w = torch.tensor([1.0, 0.0, 1.0])
    kept = {k: v[[0, 2]] for k, v in BATCH.items()}
    torch.testing.assert_close(m.loss(BATCH, w), m.loss(kept))
    # batch["weight"] is used when weights is None
    torch.testing.assert_close(m.loss({**BATCH, "weight": w}), m.loss(kept))


@pytest.mark.parametrize(
    ("kwargs", "batch", "message"),
    [
        ({}, {k: v for k, v in BATCH.items() if k != "item.logq"}, "'item.logq'.*logq_correction"),
        (
            {},
            {**BATCH, "neg.item.item_id": torch.tensor([3])},
            "'neg.item.logq'.*logq_correction=False",
        ),
        (
            {"item_id_key": "item.movie_id"},
            BATCH,
            "'item.movie_id'.*remove_accidental_hits=False",
        ),
        ({"in_batch_negatives": False}, BATCH, "no negatives"),
    ],
)
def test_missing_keys_raise_clear_errors(kwargs, batch, message):
    with pytest.raises(ValueError, match=message):
        _model(**kwargs).loss(batch)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"temperature": 0.0}, "temperature must be > 0"), ({"reduction": "max"}, "reduction")],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _model(**kwargs)


def block_interactions() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """12 users x 12 items in 2 groups of 6; users interact with their own group's items.

    User u (1-based id) in group g = (u - 1) // 6 holds out item 6 g + 1 + (u - 1) % 6: each
    user holds out a different in-block item, so every item keeps training positives.
    Returns (train users, train items, held-out item per user 1..12).
    """
    users, items, held = [], [], np.zeros(13, dtype=np.int64)
    for u in range(1, 13):
        g = (u - 1) // 6
        held[u] = 6 * g + 1 + (u - 1) % 6
        for i in range(6 * g + 1, 6 * g + 7):
            if i != held[u]:
                users.append(u)
                items.append(i)
    return np.array(users), np.array(items), held


def test_full_softmax_training_ranks_held_out_in_block_item_first():
    torch.manual_seed(0)
    users, items, held = block_interactions()
    m = TwoTower(
        [Field("user.user_id", "index", 13)],
        [Field("item.item_id", "index", 13)],
        dim=4,
        in_batch_negatives=False,
        logq_correction=False,
    )
    batch = {
        "user.user_id": torch.from_numpy(users),
        "item.item_id": torch.from_numpy(items),
        "neg.item.item_id": torch.arange(1, 13),
    }
    # A full softmax treats the held-out item as a negative for its user, so training long
    # enough memorises it away; at lr 0.01 x 300 steps the block structure is learnt and the
    # held-out item leads by a score margin of >= 2.4 over seeds 0-9.
    opt = torch.optim.Adam(m.parameters(), lr=0.01)
    for _ in range(300):
        opt.zero_grad()
        m.loss(batch).backward()
        opt.step()
    with torch.no_grad():
        u = m.user_embedding({"user.user_id": torch.arange(1, 13)})
        scores = u @ m.item_embedding({"item.item_id": torch.arange(1, 13)}).T  # (12, 12)
    scores[torch.from_numpy(users - 1), torch.from_numpy(items - 1)] = -torch.inf  # seen
    top1 = scores.argmax(1) + 1
    assert top1.tolist() == held[1:].tolist()


# --- grouped in-batch softmax == column-by-column softmax -------------------------------------

USER_FIELDS = [
    Field("user.user_id", "index", 7),
    Field("user.tags", "bag", 4),
    Field("user.age", "numeric", 2),
]
ITEM_FIELDS = [
    Field("item.item_id", "index", 9),
    Field("item.genre", "bag", 5),
    Field("item.price", "numeric", 1),
]


def _random_batch(
    seed: int, n_rows: int, n_users: int, n_items: int, n_neg: int, dtype: torch.dtype
) -> dict[str, Tensor]:
    """Rows repeat users and items (ids 0..n-1, 0 = OOV); features are a function of the id
    except for OOV items and a quarter of the rows' user ages (as context-dependent values),
    logq is a function of the item, and the negatives' bags are one slot narrower."""
    g = torch.Generator().manual_seed(seed)
    users = torch.randint(0, n_users, (n_rows,), generator=g)
    items = torch.randint(0, n_items, (n_rows,), generator=g)
    tags, age = torch.randint(0, 4, (7, 2), generator=g), torch.randn(7, 2, generator=g)
    genre, price = torch.randint(0, 5, (9, 3), generator=g), torch.randn(9, 1, generator=g)
    logq = torch.rand(9, generator=g).log()
    noisy = torch.rand(n_rows, 1, generator=g) < 0.25
    oov = (items == 0).unsqueeze(1)
    batch = {
        "user.user_id": users,
        "user.tags": tags[users],
        "user.age": torch.where(noisy, torch.randn(n_rows, 2, generator=g), age[users]),
        "item.item_id": items,
        "item.genre": torch.where(oov, torch.randint(0, 5, (n_rows, 3), generator=g), genre[items]),
        "item.price": torch.where(oov, torch.randn(n_rows, 1, generator=g), price[items]),
        "item.logq": logq[items],
    }
    if n_neg:
        neg = torch.randint(0, n_items, (n_neg,), generator=g)
        batch |= {
            "neg.item.item_id": neg,
            "neg.item.genre": genre[neg][:, :2],
            "neg.item.price": price[neg],
            "neg.item.logq": logq[neg],
        }
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.items()}


def _feature_model(dtype: torch.dtype = torch.float64, **kwargs) -> TwoTower:
    torch.manual_seed(0)
    m = TwoTower(USER_FIELDS, ITEM_FIELDS, dim=4, hidden=(5, 3), **kwargs).to(dtype)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype))
    return m.eval()


def _reference_loss(
    m: TwoTower, batch: dict[str, Tensor], weights: Tensor | None, hard: int = 0
) -> Tensor:
    """Column-by-column softmax: one column per in-batch row (others' zero-weight rows and,
    with hit removal, others' rows of the same id > 0 removed) and per extra negative; with
    ``hard`` > 0 each row keeps its positive and the ``hard`` largest remaining columns."""
    u, v = m.user_embedding(batch), m.item_embedding(batch)  # one tower pass per row
    ids, n = batch[m.item_id_key], len(batch[m.item_id_key])
    w = torch.ones(n, dtype=u.dtype) if weights is None else weights
    eye = torch.eye(n, dtype=torch.bool)
    valid = (w != 0).expand(n, n) | eye
    cols, col_ids, logq = [v], [ids], [batch.get("item.logq")]
    if "neg.item.item_id" in batch:
        cols.append(m.item_embedding(batch, prefix="neg.item."))
        col_ids.append(batch["neg." + m.item_id_key])
        logq.append(batch.get("neg.item.logq"))
        valid = torch.cat([valid, torch.ones(n, len(col_ids[1]), dtype=torch.bool)], 1)
        eye = torch.cat([eye, torch.zeros_like(valid[:, n:])], 1)
    z = u @ torch.cat(cols).T / m.temperature
    if m.logq_correction:
        z = z - torch.cat(logq)
    if m.remove_accidental_hits:
        all_ids = torch.cat(col_ids)
        valid &= ~((ids[:, None] == all_ids[None, :]) & (all_ids > 0)) | eye
    per_row = torch.logsumexp(z.masked_fill(~valid, -torch.inf), 1) - z[eye]
    if hard:
        # removed columns leave the row; the rest sorted, the largest `hard` kept
        per_row = torch.stack(
            [
                torch.logsumexp(
                    torch.cat([z[i][eye[i]], z[i][valid[i] & ~eye[i]].sort(descending=True)[0]])[
                        : 1 + hard
                    ],
                    0,
                )
                - z[i][eye[i]][0]
                for i in range(n)
            ]
        )
    total = (per_row * w).sum()
    return total if m.reduction == "sum" else total / w.sum().clamp_min(1e-12)  # 0 if all 0


def _value_and_grads(m: TwoTower, loss_fn) -> tuple[Tensor, dict[str, Tensor]]:
    m.zero_grad()
    loss = loss_fn()
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in m.named_parameters()}


def _assert_grouped_equals_reference(m, batch, weights, rtol, atol):
    got, got_grads = _value_and_grads(m, lambda: m.loss(batch, weights))
    ref, ref_grads = _value_and_grads(m, lambda: _reference_loss(m, batch, weights))
    torch.testing.assert_close(got, ref, rtol=rtol, atol=0.0)
    for name in ref_grads:
        torch.testing.assert_close(got_grads[name], ref_grads[name], rtol=0.0, atol=atol)


@pytest.mark.parametrize(
    ("hits", "logq", "n_neg", "weighted", "reduction"),
    list(itertools.product([True, False], [True, False], [0, 5], [True, False], ["mean", "sum"])),
)
def test_grouped_loss_equals_column_by_column_softmax(hits, logq, n_neg, weighted, reduction):
    m = _feature_model(
        temperature=0.7,
        remove_accidental_hits=hits,
        logq_correction=logq,
        normalize=hits,  # both settings of normalize across the grid
        reduction=reduction,
    )
    batch = _random_batch(3, n_rows=30, n_users=5, n_items=6, n_neg=n_neg, dtype=torch.float64)
    g = torch.Generator().manual_seed(4)
    # a third of the rows absent (weight 0), among them some whose item no other row holds
    weights = (torch.rand(30, generator=g, dtype=torch.float64) + 0.5) * (
        torch.rand(30, generator=g) > 0.33
    )
    # float64: the two sums differ only by rounding
    _assert_grouped_equals_reference(m, batch, weights if weighted else None, 1e-10, 1e-10)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n_rows=st.integers(1, 40),
    n_users=st.integers(1, 7),
    n_items=st.integers(1, 9),
    n_neg=st.integers(0, 6),
    zero_fraction=st.sampled_from([0.0, 0.5, 1.0]),
    hits=st.booleans(),
    temperature=st.sampled_from([0.05, 1.0]),
)
def test_grouped_loss_property(
    seed, n_rows, n_users, n_items, n_neg, zero_fraction, hits, temperature
):
    m = _feature_model(temperature=temperature, remove_accidental_hits=hits)
    batch = _random_batch(seed, n_rows, n_users, n_items, n_neg, torch.float64)
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(n_rows, generator=g, dtype=torch.float64) * (
        torch.rand(n_rows, generator=g) >= zero_fraction
    )  # zero_fraction 1.0: every row absent, the loss is 0 and finite
    _assert_grouped_equals_reference(m, batch, weights, 1e-9, 1e-9)


def test_grouped_loss_float32_tutorial_like_batch():
    # ids-only towers at dim 32, 512 rows over 40 users and 60 items: many repeats.
    torch.manual_seed(0)
    m = TwoTower([Field("user.user_id", "index", 41)], [Field("item.item_id", "index", 61)], dim=32)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    items = torch.randint(0, 61, (512,), generator=g)
    batch = {
        "user.user_id": torch.randint(0, 41, (512,), generator=g),
        "item.item_id": items,
        "item.logq": torch.rand(61, generator=g).log()[items],
        "weight": (torch.rand(512, generator=g) > 0.1).float(),
    }
    _assert_grouped_equals_reference(m, batch, batch["weight"], 1e-5, 1e-5)


def test_train_mode_dropout_draws_per_row_as_the_column_by_column_softmax():
    # with active dropout each row's embedding has its own mask, so the loss is the
    # column-by-column softmax with the same random draws (same seed, same call order)
    m = _feature_model(dropout=0.3).train()
    batch = _random_batch(5, n_rows=20, n_users=4, n_items=5, n_neg=3, dtype=torch.float64)
    torch.manual_seed(7)
    got = m.loss(batch)
    torch.manual_seed(7)
    torch.testing.assert_close(got, _reference_loss(m, batch, None), rtol=1e-12, atol=0.0)


class _Loss(torch.nn.Module):
    def __init__(self, model: TwoTower) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, Tensor], weights: Tensor | None) -> Tensor:
        return self.model.loss(batch, weights)


def test_grouped_loss_under_vmap_over_stacked_members(monkeypatch):
    members = [_feature_model(remove_accidental_hits=hits) for hits in (True, True)]
    with torch.no_grad():
        for p in members[1].parameters():
            p.mul_(0.5).add_(0.1)
    batch = _random_batch(6, n_rows=25, n_users=4, n_items=5, n_neg=4, dtype=torch.float64)
    weights = (torch.rand(2, 25, generator=torch.Generator().manual_seed(0)) > 0.3).double()
    refs = [
        _value_and_grads(m, lambda m=m, w=w: _reference_loss(m, batch, w))
        for m, w in zip(members, weights, strict=True)
    ]

    wrapped = [_Loss(m) for m in members]
    params, buffers = stack_module_state(wrapped)
    base = copy.deepcopy(wrapped[0]).to("meta")

    def member_loss(p, b, x, w):
        return functional_call(base, (p, b), (x, w))

    # shared batch (in_dims None), per-member weights: the grouped path runs under vmap
    monkeypatch.setattr(TwoTower, "_dense_losses", _forbidden)
    losses = vmap(member_loss, in_dims=(0, 0, None, 0))(params, buffers, batch, weights)
    losses.sum().backward()
    for k, (ref, ref_grads) in enumerate(refs):
        torch.testing.assert_close(losses[k], ref, rtol=1e-10, atol=0.0)
        for name, grad in ref_grads.items():
            torch.testing.assert_close(params[f"model.{name}"].grad[k], grad, rtol=0, atol=1e-10)
    monkeypatch.undo()

    # per-member batches (in_dims 0): torch.unique cannot run, the column-by-column path does
    stacked = {k: torch.stack([v, v]) for k, v in batch.items()}
    losses = vmap(member_loss, in_dims=(0, 0, 0, 0))(params, buffers, stacked, weights)
    for k, (ref, _) in enumerate(refs):
        torch.testing.assert_close(losses[k], ref, rtol=1e-10, atol=0.0)


def _forbidden(*args, **kwargs):
    raise AssertionError("the column-by-column path ran where the grouped one should")


def test_single_model_takes_the_grouped_path(monkeypatch):
    monkeypatch.setattr(TwoTower, "_dense_losses", _forbidden)
    m = _feature_model()
    batch = _random_batch(8, n_rows=10, n_users=3, n_items=4, n_neg=2, dtype=torch.float64)
    assert torch.isfinite(m.loss(batch))


def test_item_bias_factors_and_reg_known_answer():
    # score = <u, v> / T + b_item; user_factors . item_factors equals forward; the L2 penalty
    # is mean_rows(||u||^2 + ||v||^2 + b^2) (no extra negatives here)
    torch.manual_seed(0)
    fields_u = [Field("user.user_id", "index", 4)]
    fields_i = [Field("item.item_id", "index", 5)]
    m = TwoTower(
        fields_u, fields_i, dim=3, temperature=0.5, logq_correction=False, item_bias=True, reg=0.1
    ).eval()
    batch = {"user.user_id": torch.tensor([1, 2, 3]), "item.item_id": torch.tensor([4, 2, 1])}
    u = m.user_tower(batch)
    v = m.item_tower(batch)
    b = m.item_bias(batch).squeeze(-1)
    expected = (u * v).sum(-1) / 0.5 + b
    torch.testing.assert_close(m(batch), expected)
    torch.testing.assert_close((m.user_factors(batch) * m.item_factors(batch)).sum(-1), expected)
    no_reg = TwoTower(
        fields_u, fields_i, dim=3, temperature=0.5, logq_correction=False, item_bias=True
    ).eval()
    no_reg.load_state_dict(m.state_dict())
    penalty = (u.square().sum(-1) + v.square().sum(-1) + b.square()).mean()
    torch.testing.assert_close(m.loss(batch), no_reg.loss(batch) + 0.1 * penalty)


def test_user_dropout_only_in_training():
    m = TwoTower(
        [Field("user.user_id", "index", 4)],
        [Field("item.item_id", "index", 5)],
        dim=8,
        logq_correction=False,
        user_dropout=0.5,
    )
    batch = {"user.user_id": torch.tensor([1, 2]), "item.item_id": torch.tensor([3, 4])}
    m.eval()
    torch.testing.assert_close(m.user_embedding(batch), m.user_tower(batch))
    m.train()
    torch.manual_seed(1)
    dropped = m.user_embedding(batch)
    # inverted dropout: every entry is 0 or twice the tower output
    base = m.user_tower(batch)
    assert bool(((dropped == 0) | torch.isclose(dropped, 2 * base)).all())
    assert bool((dropped == 0).any())


@pytest.mark.parametrize("hits", [True, False])
@pytest.mark.parametrize("logq", [True, False])
def test_shared_negative_path_equals_dense(hits, logq):
    # full-catalogue softmax (the positive's own column among the negatives) and a sampled
    # set with a duplicate id: the per-user path equals the row-by-row dense reference
    torch.manual_seed(3)
    m = TwoTower(
        [Field("user.user_id", "index", 6)],
        [Field("item.item_id", "index", 7)],
        dim=4,
        in_batch_negatives=False,
        remove_accidental_hits=hits,
        logq_correction=logq,
        item_bias=True,
    ).double()
    batch = {
        "user.user_id": torch.tensor([1, 2, 1, 3, 2, 5]),
        "item.item_id": torch.tensor([1, 2, 3, 1, 0, 6]),
        "item.logq": torch.randn(6, dtype=torch.float64),
    }
    for negs in (torch.arange(7), torch.tensor([0, 1, 1, 4, 6])):
        b = {
            **batch,
            "neg.item.item_id": negs,
            "neg.item.logq": torch.randn(negs.numel(), dtype=torch.float64),
        }
        w = torch.tensor([1.0, 2.0, 0.0, 1.0, 1.0, 0.5], dtype=torch.float64)
        fast = m._shared_negative_losses(b)
        dense = m._dense_losses(b, w, True)
        torch.testing.assert_close(fast, dense, rtol=1e-9, atol=1e-9)
        assert m._can_group_users(b)


# --- hard-negative mining -----------------------------------------------------------------------


def test_hard_negatives_hand_worked_example():
    # 1-d towers, temperature 1: score(u, i) = u * v. Users u1 = 1, u2 = -1, u3 = 0;
    # items v1 = 1, v2 = 2, v3 = 3; log-Q: item1 0, item2 2, item3 0.
    # Rows (user, item): r0 = (u1, 3), r1 = (u2, 1), r2 = (u2, 2), r3 = (u3, 3); the in-batch
    # columns hold items [3, 1, 2, 3], logq [0, 0, 2, 0].
    # corrected logits c = u * v - logq, rows x columns:
    #   r0 (u1):  [ 3,  1,  0,  3]   positive col 0; col 3 (item 3 again) is an accidental hit
    #   r1 (u2):  [-3, -1, -4, -3]   positive col 1
    #   r2 (u2):  [-3, -1, -4, -3]   positive col 2
    #   r3 (u3):  [ 0,  0, -2,  0]   positive col 3; col 0 (item 3) is an accidental hit
    # hard_negatives = 1 keeps per row the positive and the largest non-hit negative:
    #   r0: col 1 (1), not col 2 (0) -- before log-Q, col 2 (raw 2) beat col 1 (raw 1) -- and
    #       not the hit col 3 (3): loss = log(e^3 + e^1) - 3 = log(1 + e^-2)
    #   r1: one of cols 0 / 3 (-3): loss = log(e^-1 + e^-3) + 1 = log(1 + e^-2)
    #   r2: col 1 (-1); the positive (-4) is kept though it is the row's lowest:
    #       loss = log(e^-4 + e^-1) + 4 = log(1 + e^3)
    #   r3: col 1 (0): loss = log(e^0 + e^0) - 0 = log 2
    # hard_negatives = 2:
    #   r0: cols 1, 2: log(1 + e^-2 + e^-3) (every non-hit negative: the plain loss)
    #   r1: cols 0, 3: log(1 + 2 e^-2)       (plain: log(1 + 2 e^-2 + e^-3))
    #   r2: cols 1, 0: log(1 + e^3 + e^1)     (plain: log(1 + e^3 + 2 e^1))
    #   r3: cols 1, 2: log(2 + e^-2)          (every non-hit negative: the plain loss)
    e = np.exp
    expected = {
        1: np.mean([np.log1p(e(-2)), np.log1p(e(-2)), np.log1p(e(3)), np.log(2)]),
        2: np.mean(
            [
                np.log(1 + e(-2) + e(-3)),
                np.log(1 + 2 * e(-2)),
                np.log(1 + e(3) + e(1)),
                np.log(2 + e(-2)),
            ]
        ),
        0: np.mean(
            [
                np.log(1 + e(-2) + e(-3)),
                np.log(1 + 2 * e(-2) + e(-3)),
                np.log(1 + e(3) + 2 * e(1)),
                np.log(2 + e(-2)),
            ]
        ),
    }
    batch = {
        "user.user_id": torch.tensor([1, 2, 2, 3]),
        "item.item_id": torch.tensor([3, 1, 2, 3]),
        "item.logq": torch.tensor([0.0, 0.0, 2.0, 0.0], dtype=torch.float64),
    }
    for n, value in expected.items():
        m = TwoTower(
            [Field("user.user_id", "index", 4)],
            [Field("item.item_id", "index", 4)],
            dim=1,
            hard_negatives=n,
        ).double()
        with torch.no_grad():
            m.user_tower.embedding.vectors["user__user_id"].weight.copy_(
                torch.tensor([[0.0], [1.0], [-1.0], [0.0]])
            )
            m.item_tower.embedding.vectors["item__item_id"].weight.copy_(
                torch.tensor([[0.0], [1.0], [2.0], [3.0]])
            )
        np.testing.assert_allclose(m.loss(batch).item(), value, rtol=1e-12)


def test_hard_negatives_gradient_reaches_only_the_kept_columns():
    # one row against 3 shared negatives: items 2, 3, 4 with scores 2, 3, 4 (u = 1); n = 1
    # keeps item 4 only, so items 2 and 3 get no gradient; the loss log(e^v1 + e^v4) - v1
    # (u = 1, v1 = 1, v4 = 4) gives item 4 p4 = e^4 / (e^1 + e^4) and item 1 (the
    # positive) e^1 / (e^1 + e^4) - 1 = -p4
    m = TwoTower(
        [Field("user.user_id", "index", 2)],
        [Field("item.item_id", "index", 5)],
        dim=1,
        in_batch_negatives=False,
        logq_correction=False,
        hard_negatives=1,
    ).double()
    with torch.no_grad():
        m.user_tower.embedding.vectors["user__user_id"].weight.copy_(torch.tensor([[0.0], [1.0]]))
        m.item_tower.embedding.vectors["item__item_id"].weight.copy_(
            torch.arange(5, dtype=torch.float64).unsqueeze(1)
        )
    batch = {
        "user.user_id": torch.tensor([1]),
        "item.item_id": torch.tensor([1]),
        "neg.item.item_id": torch.tensor([2, 3, 4]),
    }
    m.loss(batch).backward()
    grad = m.item_tower.embedding.vectors["item__item_id"].weight.grad.squeeze(1)
    p4 = np.exp(4) / (np.exp(1) + np.exp(4))
    np.testing.assert_allclose(grad.numpy(), [0.0, -p4, 0.0, 0.0, p4], atol=1e-12)


@pytest.mark.parametrize(
    ("hits", "logq", "n_neg", "in_batch", "hard"),
    [
        (h, q, k, b, n)
        for h, q, k, b, n in itertools.product(
            [True, False], [True, False], [0, 5], [True, False], [1, 3, 7]
        )
        if b or k
    ],
)
def test_hard_negatives_equal_the_sorted_reference(hits, logq, n_neg, in_batch, hard):
    # every path (in-batch, in-batch + shared, shared only) against a row-by-row reference that
    # drops removed columns and sorts the rest; a third of the rows absent (weight 0)
    m = _feature_model(
        temperature=0.7,
        remove_accidental_hits=hits,
        logq_correction=logq,
        in_batch_negatives=in_batch,
        hard_negatives=hard,
    )
    batch = _random_batch(3, n_rows=30, n_users=5, n_items=6, n_neg=n_neg, dtype=torch.float64)
    weights = (torch.rand(30, generator=torch.Generator().manual_seed(4)) > 0.33).double()
    ref_model = copy.deepcopy(m)
    if not in_batch:
        # the reference's in-batch columns all removed: only the positive and the negatives
        ref = _reference_loss_shared(ref_model, batch, weights, hard)
    else:
        ref = _reference_loss(ref_model, batch, weights, hard)
    torch.testing.assert_close(m.loss(batch, weights), ref, rtol=1e-10, atol=0.0)


def _reference_loss_shared(m: TwoTower, batch: dict[str, Tensor], w: Tensor, hard: int) -> Tensor:
    """Row-by-row softmax of the positive against the shared negatives (hits removed), keeping
    the ``hard`` largest negatives."""
    u, v = m.user_embedding(batch), m.item_embedding(batch)
    vn = m.item_embedding(batch, prefix="neg.item.")
    pos = (u * v).sum(1) / m.temperature
    z = u @ vn.T / m.temperature
    if m.logq_correction:
        pos = pos - batch["item.logq"]
        z = z - batch["neg.item.logq"]
    ids, neg_ids = batch["item.item_id"], batch["neg.item.item_id"]
    rows = []
    for i in range(len(pos)):
        keep = torch.ones(len(neg_ids), dtype=torch.bool)
        if m.remove_accidental_hits:
            keep = ~((neg_ids == ids[i]) & (neg_ids > 0))
        neg = z[i][keep].sort(descending=True)[0][:hard]
        rows.append(torch.logsumexp(torch.cat([pos[i : i + 1], neg]), 0) - pos[i])
    return (torch.stack(rows) * w).sum() / w.sum()


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n_rows=st.integers(1, 30),
    n_items=st.integers(1, 9),
    n_neg=st.integers(0, 6),
    hits=st.booleans(),
    logq=st.booleans(),
    in_batch=st.booleans(),
    extra=st.integers(0, 5),
)
def test_hard_negatives_at_least_the_candidates_equal_the_plain_loss(
    seed, n_rows, n_items, n_neg, hits, logq, in_batch, extra
):
    # N >= the number of candidate columns keeps every negative: the loss is the plain one,
    # which runs on the grouped / per-user fast paths
    if not in_batch and n_neg == 0:
        n_neg = 1
    batch = _random_batch(seed, n_rows, 4, n_items, n_neg, torch.float64)
    if not in_batch:
        # shared negatives drawn from the rows' own items, so an accidental hit has the
        # positive's features (as the catalogue gives them): the per-user path subtracts the
        # hit's share of the softmax and is exact only when the hit scores as the positive
        pick = torch.randint(0, n_rows, (n_neg,), generator=torch.Generator().manual_seed(seed))
        for key in ("item_id", "genre", "price", "logq"):
            batch["neg.item." + key] = batch["item." + key][pick]
    n_candidates = (n_rows if in_batch else 1) + n_neg
    weights = torch.rand(n_rows, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    kwargs = {
        "remove_accidental_hits": hits,
        "logq_correction": logq,
        "in_batch_negatives": in_batch,
    }
    hard = _feature_model(hard_negatives=n_candidates + extra, **kwargs)
    plain = _feature_model(**kwargs)
    got, got_grads = _value_and_grads(hard, lambda: hard.loss(batch, weights))
    ref, ref_grads = _value_and_grads(plain, lambda: plain.loss(batch, weights))
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=0.0, atol=1e-10)


def test_hard_negatives_under_vmap_over_stacked_members():
    # ensemble members vmapped with a shared batch: each member's loss equals its own loss
    members = [_feature_model(hard_negatives=2) for _ in range(2)]
    with torch.no_grad():
        for p in members[1].parameters():
            p.mul_(0.5).add_(0.1)
    batch = _random_batch(6, n_rows=25, n_users=4, n_items=5, n_neg=4, dtype=torch.float64)
    weights = (torch.rand(2, 25, generator=torch.Generator().manual_seed(0)) > 0.3).double()
    refs = [_reference_loss(m, batch, w, hard=2) for m, w in zip(members, weights, strict=True)]
    wrapped = [_Loss(m) for m in members]
    params, buffers = stack_module_state(wrapped)
    base = copy.deepcopy(wrapped[0]).to("meta")

    def member_loss(p, b, x, w):
        return functional_call(base, (p, b), (x, w))

    losses = vmap(member_loss, in_dims=(0, 0, None, 0))(params, buffers, batch, weights)
    torch.testing.assert_close(losses, torch.stack(refs).detach(), rtol=1e-10, atol=0.0)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, r"hard_negatives must be >= 0 \(0 = off\), got -1"),
        (True, r"hard_negatives must be an integer \(0 = off\), got True"),
        (2.5, r"hard_negatives must be an integer \(0 = off\), got 2.5"),
    ],
)
def test_bad_hard_negatives(value, message):
    with pytest.raises(ValueError, match=message):
        _model(hard_negatives=value)


@pytest.mark.parametrize("cells", [1, 7, 10**6])
def test_block_logsumexp_equals_logsumexp_in_value_and_gradient(cells):
    # blocks of max(1, cells // 4) items: one item, one item, every item at once
    g = torch.Generator().manual_seed(0)
    u = (torch.randn(4, 3, generator=g, dtype=torch.float64) * 5).requires_grad_(True)
    v = torch.randn(9, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    offset = torch.randn(9, generator=g, dtype=torch.float64).requires_grad_(True)
    w = torch.randn(4, generator=g, dtype=torch.float64)  # an arbitrary incoming gradient
    got = block_logsumexp(u, v, offset, cells)
    got_grads = torch.autograd.grad((got * w).sum(), (u, v, offset))
    ref = torch.logsumexp(u @ v.T + offset, dim=1)
    ref_grads = torch.autograd.grad((ref * w).sum(), (u, v, offset))
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=0.0)
    for a, b in zip(got_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_block_logsumexp_under_vmap_over_stacked_members():
    g = torch.Generator().manual_seed(1)
    u = torch.randn(3, 4, 2, generator=g, dtype=torch.float64)  # 3 members
    v = torch.randn(3, 5, 2, generator=g, dtype=torch.float64)
    offset = torch.randn(5, generator=g, dtype=torch.float64)

    def loss(u_m: Tensor, v_m: Tensor, blocks: bool) -> Tensor:
        if blocks:
            return block_logsumexp(u_m, v_m, offset, cells=4).sum()
        return torch.logsumexp(u_m @ v_m.T + offset, dim=1).sum()

    got = vmap(torch.func.grad(loss, argnums=(0, 1)), in_dims=(0, 0, None))(u, v, True)
    ref = vmap(torch.func.grad(loss, argnums=(0, 1)), in_dims=(0, 0, None))(u, v, False)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_full_softmax_loss_never_needs_the_whole_score_matrix(monkeypatch):
    # blocks of 2 items (cells = 2 * U): the full-softmax loss and its gradients are unchanged
    m = _model(in_batch_negatives=False, logq_correction=False)
    batch = {
        "user.user_id": torch.tensor([1, 2, 1, 3]),
        "item.item_id": torch.tensor([1, 2, 3, 5]),
        "neg.item.item_id": torch.arange(1, N_ITEMS),
    }
    whole, whole_grads = _value_and_grads(m, lambda: m.loss(batch))
    monkeypatch.setattr("wager.models.two_tower.LSE_CELLS", 6)  # 3 users x 2 items
    got, got_grads = _value_and_grads(m, lambda: m.loss(batch))
    torch.testing.assert_close(got, whole, rtol=1e-6, atol=0.0)
    for name in whole_grads:
        torch.testing.assert_close(got_grads[name], whole_grads[name], rtol=1e-5, atol=1e-7)
