"""CrossNetwork and DCNRanker against the DCN-v2 formulas written out in NumPy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wager.models.fields import Field
from wager.models.heads import BernoulliHead, GaussianHead, PointHead
from wager.models.ranking import CrossNetwork, DCNRanker, Task, task_output


def _params(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().double().numpy() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("low_rank", [None, 2])
def test_cross_network_matches_numpy_formula(low_rank):
    torch.manual_seed(0)
    net = CrossNetwork(5, layers=2, low_rank=low_rank).double()
    x0 = np.random.default_rng(0).normal(size=(3, 5))
    w = _params(net)
    x = x0
    for layer in range(2):
        if low_rank is None:
            wx = x @ w[f"layers.{layer}.weight"].T + w[f"layers.{layer}.bias"]
        else:  # W = U V^T with V^T: (r, d), U: (d, r)
            v_t, u = w[f"layers.{layer}.0.weight"], w[f"layers.{layer}.1.weight"]
            wx = (x @ v_t.T) @ u.T + w[f"layers.{layer}.1.bias"]
        x = x0 * wx + x
    np.testing.assert_allclose(net(torch.tensor(x0)).detach().numpy(), x, rtol=1e-12)
    assert torch.equal(CrossNetwork(5, layers=0)(torch.ones(2, 5)), torch.ones(2, 5))


USERS = [Field("user.user_id", "index", 4)]
ITEMS = [Field("item.item_id", "index", 5), Field("item.genre", "bag", 3)]
CONTEXT = [Field("context.hour", "numeric", 2)]
BATCH = {
    "user.user_id": torch.tensor([1, 2, 3]),
    "item.item_id": torch.tensor([4, 0, 2]),
    "item.genre": torch.tensor([[1, 2], [0, 0], [2, 0]]),
    "context.hour": torch.tensor([[0.5, 0.0], [-1.0, 1.0], [0.0, 0.0]]),
    "click": torch.tensor([1.0, 0.0, 1.0]),
    "rating": torch.tensor([4.0, 2.0, 5.0]),
}


def _x0(m: DCNRanker) -> np.ndarray:
    w = _params(m.embedding)
    genre_tab = w["vectors.item__genre.weight"]
    bag = BATCH["item.genre"].numpy()
    mask = (bag > 0).astype(float)
    genre = (genre_tab[bag] * mask[..., None]).sum(1) / np.maximum(mask.sum(1), 1)[:, None]
    parts = [
        w["vectors.user__user_id.weight"][BATCH["user.user_id"].numpy()],
        w["vectors.item__item_id.weight"][BATCH["item.item_id"].numpy()],
        genre,
        BATCH["context.hour"].numpy() @ w["vectors.context__hour.weight"].T,
    ]
    return np.concatenate(parts, axis=1)  # (B, 4 fields * dim), in field order


def _dense(x: np.ndarray, w: dict[str, np.ndarray], name: str) -> np.ndarray:
    return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]


@pytest.mark.parametrize("structure", ["parallel", "stacked"])
def test_dcn_forward_matches_numpy(structure):
    torch.manual_seed(0)
    m = DCNRanker(USERS, ITEMS, CONTEXT, dim=3, cross_layers=1, deep=(4,), structure=structure)
    x0 = _x0(m)
    assert x0.shape == (3, 12)
    w = _params(m)
    cross = x0 * _dense(x0, w, "cross.layers.0") + x0
    if structure == "parallel":
        h = np.concatenate([cross, np.maximum(_dense(x0, w, "deep.0"), 0)], axis=1)
    else:
        h = np.maximum(_dense(cross, w, "deep.0"), 0)
    ref = _dense(h, w, "output")[:, 0]
    np.testing.assert_allclose(m(BATCH).detach().numpy(), ref, rtol=1e-5, atol=1e-6)


def test_multi_task_outputs_and_weighted_loss():
    torch.manual_seed(0)
    tasks = (
        Task("click", "click", BernoulliHead(), 1.0),
        Task("rating", "rating", PointHead(), 0.5),
    )
    m = DCNRanker(USERS, ITEMS, CONTEXT, dim=3, deep=(4,), tasks=tasks)
    out = m(BATCH)
    assert out.shape == (3, 2) and m.head is None
    w = torch.tensor([1.0, 0.0, 2.0])
    ref = BernoulliHead().loss(out[:, 0], BATCH["click"], w) + 0.5 * PointHead().loss(
        out[:, 1], BATCH["rating"], w
    )
    torch.testing.assert_close(m.loss(BATCH, w), ref)


def test_single_gaussian_task_outputs_two_columns():
    task = Task("rating", "rating", GaussianHead(), 1.0)
    m = DCNRanker(USERS, ITEMS, CONTEXT, dim=3, deep=(4,), tasks=(task,))
    out = m(BATCH)
    assert out.shape == (3, 2) and m.head is task.head
    torch.testing.assert_close(m.loss(BATCH), task.head.loss(out, BATCH["rating"]))


def test_click_and_gaussian_rating_tasks_share_one_output_layer_side_by_side():
    # columns: [click logit | rating location, rating log-scale]: 1 + 2 = 3 outputs
    tasks = (Task("click", "click", BernoulliHead(), 0.5), Task("rating", "rating", GaussianHead()))
    m = DCNRanker(USERS, ITEMS, CONTEXT, dim=3, deep=(4,), tasks=tasks)
    out = m(BATCH)
    assert out.shape == (3, 3) and m.head is None
    heads = (tasks[0].head, tasks[1].head)
    torch.testing.assert_close(task_output(out, heads, 0), out[:, 0])
    torch.testing.assert_close(task_output(out, heads, 1), out[:, 1:3])
    ref = 0.5 * BernoulliHead().loss(out[:, 0], BATCH["click"]) + GaussianHead().loss(
        out[:, 1:3], BATCH["rating"]
    )
    torch.testing.assert_close(m.loss(BATCH), ref)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (
            lambda: DCNRanker(
                USERS, ITEMS, [], tasks=(Task("a", "x", PointHead()), Task("a", "y", PointHead()))
            ),
            ValueError,
            "unique",
        ),
        (lambda: DCNRanker(USERS, ITEMS, [], structure="serial"), ValueError, "structure"),
        (lambda: Task("a", "x", PointHead(), weight=-1.0), ValueError, "weight must be >= 0"),
        (lambda: CrossNetwork(4, low_rank=0), ValueError, "low_rank"),
    ],
)
def test_bad_arguments(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_missing_label_names_the_task():
    m = DCNRanker(
        USERS, ITEMS, CONTEXT, dim=2, deep=(4,), tasks=(Task("buy", "bought", BernoulliHead()),)
    )
    with pytest.raises(ValueError, match=r"\['bought'\] of tasks \['buy'\]"):
        m.loss(BATCH)
