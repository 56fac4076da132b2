"""Population OOV rows: each member's unknown-value row is a random known row's deviation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from wager.config import EnsembleConfig, ModelConfig, RunConfig, TrainConfig, UncertaintyConfig
from wager.data.schema import Schema
from wager.models.fields import Field
from wager.recommender import Recommender
from wager.uncertainty.cold_start import population_oov

KEY = "user.vectors.user__uid.weight"


def _picks(members: int, n_known: int, seed: int) -> list[int]:
    """The known rows the function draws: one randint(n_known) per member, same generator."""
    return torch.randint(
        n_known, (members,), generator=torch.Generator().manual_seed(seed)
    ).tolist()


def test_index_table_by_hand():
    # rows 1..3 hold 1, 2, 4 in every member (centre 7/3); OOV row 0 holds 10 (member 0)
    # and 20 (member 1). Untrained OOV: the row becomes the drawn known row itself.
    # Learned OOV: 10 + (drawn - 7/3) and 20 + (drawn - 7/3).
    table = torch.tensor([[[10.0], [1.0], [2.0], [4.0]], [[20.0], [1.0], [2.0], [4.0]]])
    values = [1.0, 2.0, 4.0]
    field = [Field("user.uid", "index", 4)]
    picks = _picks(2, 3, seed=5)

    p = {KEY: table.clone()}
    assert population_oov(p, field, torch.Generator().manual_seed(5)) == [KEY]
    expected = [values[picks[0]], values[picks[1]]]
    np.testing.assert_allclose(p[KEY][:, 0, 0].numpy(), expected, rtol=1e-6)
    torch.testing.assert_close(p[KEY][:, 1:], table[:, 1:])  # known rows untouched

    p = {KEY: table.clone()}
    population_oov(p, field, torch.Generator().manual_seed(5), learned=frozenset({"user.uid"}))
    expected = [10.0 + values[picks[0]] - 7 / 3, 20.0 + values[picks[1]] - 7 / 3]
    np.testing.assert_allclose(p[KEY][:, 0, 0].numpy(), expected, rtol=1e-6)


def test_bag_table_keeps_padding_and_numeric_and_other_tensors_untouched():
    bag = torch.arange(2 * 5 * 2, dtype=torch.float32).reshape(2, 5, 2)  # pad 0, OOV 1
    lin = torch.ones(2, 3, 4)
    other = torch.zeros(2, 7)
    p = {
        "m.vectors.item__tags.weight": bag.clone(),
        "m.vectors.item__price.weight": lin.clone(),
        "m.deep.0.weight": other.clone(),
    }
    fields = [Field("item.tags", "bag", 5), Field("item.price", "numeric", 4)]
    changed = population_oov(p, fields, torch.Generator().manual_seed(0))
    assert changed == ["m.vectors.item__tags.weight"]
    out = p["m.vectors.item__tags.weight"]
    torch.testing.assert_close(out[:, 0], bag[:, 0])  # padding row
    torch.testing.assert_close(out[:, 2:], bag[:, 2:])  # known rows
    for m in range(2):  # the OOV row is one of member m's known rows 2..4
        assert any(torch.equal(out[m, 1], bag[m, j]) for j in range(2, 5))
    torch.testing.assert_close(p["m.vectors.item__price.weight"], lin)
    torch.testing.assert_close(p["m.deep.0.weight"], other)


def test_many_members_centre_on_the_base_and_spread_like_the_population():
    # 4000 members, 50 known rows drawn from N(3, 2^2) (the same in every member): the new
    # OOV rows are base + (row_j - centre) with j uniform, so their mean is the base (0.5,
    # se = 2 / sqrt(4000) ~ 0.03) and their std the population std of the known rows.
    gen = np.random.default_rng(0)
    known = torch.tensor(gen.normal(3.0, 2.0, 50), dtype=torch.float32)
    table = torch.cat([torch.full((1,), 0.5), known]).reshape(1, 51, 1).repeat(4000, 1, 1)
    p = {KEY: table}
    population_oov(
        p,
        [Field("user.uid", "index", 51)],
        torch.Generator().manual_seed(1),
        learned=frozenset({"user.uid"}),
    )
    oov = p[KEY][:, 0, 0].numpy()
    assert abs(oov.mean() - 0.5) < 4 * 2.0 / np.sqrt(4000)
    pop_std = float(known.numpy().std())
    assert abs(oov.std() - pop_std) < 0.1 * pop_std


def _clicks(n: int, seed: int) -> pd.DataFrame:
    """40 users x 30 items with strong per-user click rates (0.05 .. 0.6)."""
    rng = np.random.default_rng(seed)
    u, i = rng.integers(0, 40, n), rng.integers(0, 30, n)
    p = np.linspace(0.05, 0.6, 40)[u]
    return pd.DataFrame({"user_id": u, "item_id": i, "click": (rng.random(n) < p).astype(float)})


def _config(cold_start: str, members: int = 4) -> RunConfig:
    return RunConfig(
        schema=Schema(label="click", label_kind="click"),
        model=ModelConfig(type="factorization", dim=4, init_std=0.05),
        training=TrainConfig(epochs=15, batch_size=256, learning_rate=0.05, patience=3),
        ensemble=EnsembleConfig(members=members, bootstrap=True) if members > 1 else None,
        uncertainty=UncertaintyConfig(cold_start=cold_start),
    )


def test_facade_unknown_users_come_out_less_certain_with_population_rows():
    train, valid = _clicks(6000, 0), _clicks(1000, 1)
    items = list(range(30)) * 10
    ratio = {}
    for mode in ("learned", "population"):
        rec = Recommender(_config(mode)).fit(train, valid)
        known = rec.predict(list(range(40)) * 7 + list(range(20)), items)
        cold = rec.predict(["nobody"] * 300, items)
        ratio[mode] = float(cold.std.median() / known.std.median())
    # users differ a lot (click rates 0.05..0.6): a random user is far less certain than a
    # known one once the OOV rows carry the population's spread
    assert ratio["population"] > 1.5
    assert ratio["population"] > ratio["learned"]


def test_population_needs_an_ensemble():
    with pytest.raises(ValueError, match=r"cold_start = 'population'.*members >= 2"):
        Recommender(_config("population", members=1)).fit(_clicks(500, 0), _clicks(100, 1))
    with pytest.raises(ValueError, match=r"\[uncertainty\] cold_start"):
        UncertaintyConfig(cold_start="prior")
