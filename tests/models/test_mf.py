"""BiasedMF and FeatureFactorization against predictions computed by hand from their weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch

from wager.models.fields import Field
from wager.models.heads import GaussianHead, PointHead
from wager.models.mf import BiasedMF, FeatureFactorization

USER_FIELDS = [Field("user.user_id", "index", 4), Field("user.age", "numeric", 2)]
ITEM_FIELDS = [Field("item.item_id", "index", 5), Field("item.genre", "bag", 4)]
BATCH = {
    "user.user_id": torch.tensor([1, 3, 0]),
    "user.age": torch.tensor([[0.5, 0.0], [-1.0, 1.0], [2.0, 0.0]]),
    "item.item_id": torch.tensor([2, 4, 1]),
    "item.genre": torch.tensor([[1, 3], [2, 0], [0, 0]]),
    "label": torch.tensor([4.0, 2.0, 5.0]),
}


def _randomise(model: torch.nn.Module) -> None:
    # biases start at zero; give every parameter a distinct value
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))


def _side_fields(emb, batch) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per field: (B, dim) vector (zeros when dim == 0) and (B,) bias, by hand."""
    out = []
    for f in emb.fields:
        name = f.key.replace(".", "__")
        x = batch[f.key].numpy()
        b_tab = emb.biases[name].weight.detach().numpy()
        v_tab = emb.vectors[name].weight.detach().numpy() if emb.dim else None
        if f.kind == "index":
            b = b_tab[x, 0]
            v = v_tab[x] if v_tab is not None else np.zeros((len(x), 1))
        elif f.kind == "numeric":  # Linear(width, out): x @ W.T
            b = x @ b_tab[0]
            v = x @ v_tab.T if v_tab is not None else np.zeros((len(x), 1))
        else:  # bag: mean over non-zero entries, empty bag -> 0
            mask = (x > 0).astype(float)
            n = np.maximum(mask.sum(1), 1.0)
            b = (b_tab[x, 0] * mask).sum(1) / n
            v = (
                (v_tab[x] * mask[..., None]).sum(1) / n[:, None]
                if v_tab is not None
                else np.zeros((len(x), 1))
            )
        out.append((v, b))
    return out


def _side(emb, batch) -> tuple[np.ndarray, np.ndarray]:
    """(B, dim) vectors and (B,) biases of one side, summed over fields by hand."""
    parts = _side_fields(emb, batch)
    return sum(v for v, _ in parts), sum(b for _, b in parts)


def test_biased_mf_forward_is_mu_plus_biases_plus_dot():
    model = BiasedMF(USER_FIELDS, ITEM_FIELDS, dim=3, global_mean=3.5)
    assert model.global_mean.item() == 3.5
    _randomise(model)
    p, bu = _side(model.user, BATCH)
    q, bi = _side(model.item, BATCH)
    ref = model.global_mean.item() + bu + bi + (p * q).sum(1)
    np.testing.assert_allclose(model(BATCH).detach().numpy(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bias_reg", [None, 0.02])
def test_biased_mf_loss_adds_per_example_per_field_l2(bias_reg):
    model = BiasedMF(USER_FIELDS, ITEM_FIELDS, dim=3, reg=0.1, bias_reg=bias_reg)
    _randomise(model)
    p, bu = _side(model.user, BATCH)
    q, bi = _side(model.item, BATCH)
    pred = model.global_mean.item() + bu + bi + (p * q).sum(1)
    w = np.array([1.0, 2.0, 0.5])
    se = (pred - BATCH["label"].numpy()) ** 2
    # each field's own vector and bias is penalised (not the summed p_u, q_i)
    fields = _side_fields(model.user, BATCH) + _side_fields(model.item, BATCH)
    sq_vec = sum((v**2).sum(1) for v, _ in fields)
    sq_bias = sum(b**2 for _, b in fields)
    penalty = 0.1 * sq_vec + (0.1 if bias_reg is None else bias_reg) * sq_bias
    ref = (w * se).sum() / w.sum() + (w * penalty).sum() / w.sum()
    got = model.loss(BATCH, torch.tensor(w, dtype=torch.float32))
    np.testing.assert_allclose(got.item(), ref, rtol=1e-5)
    # with ids only, per-field L2 is the classic ||p_u||^2 + ||q_i||^2 (+ biases)
    ids = BiasedMF(USER_FIELDS[:1], ITEM_FIELDS[:1], dim=3, reg=0.1)
    _randomise(ids)
    p, bu = _side(ids.user, BATCH)
    q, bi = _side(ids.item, BATCH)
    se = (ids.global_mean.item() + bu + bi + (p * q).sum(1) - BATCH["label"].numpy()) ** 2
    classic = se.mean() + 0.1 * ((p**2).sum(1) + (q**2).sum(1) + bu**2 + bi**2).mean()
    np.testing.assert_allclose(ids.loss(BATCH).item(), classic, rtol=1e-5)


def test_forward_with_norms_matches_forward_and_hand_norms():
    model = BiasedMF(USER_FIELDS, ITEM_FIELDS, dim=3)
    _randomise(model)
    vec, bias, sq_vec, sq_bias = model.item.forward_with_norms(BATCH)
    v0, b0 = model.item(BATCH)
    torch.testing.assert_close(vec, v0, rtol=0, atol=0)
    torch.testing.assert_close(bias, b0, rtol=0, atol=0)
    fields = _side_fields(model.item, BATCH)
    np.testing.assert_allclose(
        sq_vec.detach().numpy(), sum((v**2).sum(1) for v, _ in fields), rtol=1e-5
    )
    np.testing.assert_allclose(sq_bias.detach().numpy(), sum(b**2 for _, b in fields), rtol=1e-5)


def test_biased_mf_gaussian_scale_varies_by_user_and_item():
    head = GaussianHead(min_std=0.05)
    model = BiasedMF(USER_FIELDS, ITEM_FIELDS, dim=3, head=head)
    _randomise(model)
    out = model(BATCH)
    assert out.shape == (3, 2)
    p, bu = _side(model.user, BATCH)
    q, bi = _side(model.item, BATCH)
    _, su = _side(model.user_scale, BATCH)
    _, si = _side(model.item_scale, BATCH)
    raw = model.scale_bias.item() + su + si
    np.testing.assert_allclose(
        out[:, 0].detach().numpy(),
        model.global_mean.item() + bu + bi + (p * q).sum(1),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(out[:, 1].detach().numpy(), raw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        head.aleatoric_std(out).detach().numpy(), np.log1p(np.exp(raw)) + 0.05, rtol=1e-5
    )


def test_feature_factorization_forward_is_bias_sum_plus_dot():
    ctx = [Field("context.pos", "index", 3)]
    model = FeatureFactorization(USER_FIELDS, ITEM_FIELDS, ctx, dim=3)
    _randomise(model)
    batch = {**BATCH, "context.pos": torch.tensor([0, 2, 1])}
    u, bu = _side(model.user, batch)
    v, bv = _side(model.item, batch)
    _, bc = _side(model.context, batch)
    ref = model.global_bias.item() + bu + bv + bc + (u * v).sum(1)
    np.testing.assert_allclose(model(batch).detach().numpy(), ref, rtol=1e-5, atol=1e-6)


def test_bad_head_and_arguments():
    @dataclass(frozen=True)
    class ThreeOutputs(PointHead):
        out_dim: ClassVar[int] = 3

    with pytest.raises(ValueError, match=r"out_dim 1 .* or 2"):
        BiasedMF(USER_FIELDS, ITEM_FIELDS, head=ThreeOutputs())
    with pytest.raises(ValueError, match="reg must be >= 0"):
        BiasedMF(USER_FIELDS, ITEM_FIELDS, reg=-1.0)


def test_training_on_block_ratings_predicts_held_out_in_block_ratings_high():
    # 12 users x 12 items, 2 groups of 6: rating 5 inside the block, 1 outside. User u holds
    # out one in-block item (a different one per user) and one off-block item.
    users, items, ratings, held = [], [], [], []
    for u in range(1, 13):
        g = (u - 1) // 6
        hold_in = 6 * g + 1 + (u - 1) % 6
        hold_out = 6 * (1 - g) + 1 + (u - 1) % 6
        held.append((u, hold_in, hold_out))
        for i in range(1, 13):
            if i in (hold_in, hold_out):
                continue
            users.append(u)
            items.append(i)
            ratings.append(5.0 if (i - 1) // 6 == g else 1.0)
    batch = {
        "user.user_id": torch.tensor(users),
        "item.item_id": torch.tensor(items),
        "label": torch.tensor(ratings),
    }
    torch.manual_seed(0)
    model = BiasedMF(
        [Field("user.user_id", "index", 13)],
        [Field("item.item_id", "index", 13)],
        dim=4,
        global_mean=float(np.mean(ratings)),
    )
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
    u, i_in, i_out = (torch.tensor(c) for c in zip(*held, strict=True))
    with torch.no_grad():
        pred_in = model({"user.user_id": u, "item.item_id": i_in})
        pred_out = model({"user.user_id": u, "item.item_id": i_out})
    assert (pred_in > 4.0).all(), pred_in
    assert (pred_out < 2.0).all(), pred_out


def test_ensemble_inference_looks_up_each_distinct_row_once_with_the_same_outputs():
    from wager.training.trainer import StackedModel

    users = [Field("user.u", "index", 5), Field("user.g", "bag", 4)]
    items = [Field("item.i", "index", 6)]

    def make() -> BiasedMF:
        return BiasedMF(users, items, dim=3, init_std=0.3, head=GaussianHead())

    stack = StackedModel(make, members=3, seed=0)
    stack.train(False)
    # 12 rows, 3 distinct users (with their bags) and 4 distinct items
    u = torch.tensor([1, 1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 4])
    g = torch.tensor([[2, 3], [2, 3], [2, 3], [2, 3], [1, 0]] + [[1, 0]] * 3 + [[0, 0]] * 4)
    i = torch.tensor([0, 1, 2, 3] * 3)
    batch = {"user.u": u, "user.g": g, "item.i": i}
    calls: list[int] = []
    # patched on the class (each call runs on its own view, a copy, of the model's modules,
    # which keeps their attributes); other tables of the class are not counted
    table = type(stack.model.user)
    orig = table.forward
    stack.model.user.counted = True

    def counting(self, b):  # the rows the user table is asked for
        if getattr(self, "counted", False):
            calls.append(len(b["user.u"]))
        return orig(self, b)

    with torch.no_grad():
        stacked = stack.call("forward", batch)  # (3, 12, 2), vmapped over members
        table.forward = counting  # type: ignore[method-assign]
        try:
            stack.call("forward", batch)
        finally:
            table.forward = orig  # type: ignore[method-assign]
        loop = torch.stack(
            [
                torch.func.functional_call(
                    stack.base,
                    (
                        {k: v[m] for k, v in stack.params.items()},
                        {k: v[m] for k, v in stack.buffers.items()},
                    ),
                    ("forward", batch),
                )
                for m in range(3)
            ]
        )
    assert calls == [3]  # 3 distinct user rows, not 12
    torch.testing.assert_close(stacked, loop, rtol=1e-6, atol=1e-6)
