"""Population cold start: an unknown value is averaged over known values drawn per member."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from wager.config import EnsembleConfig, ModelConfig, RunConfig, TrainConfig, UncertaintyConfig
from wager.data.schema import Schema
from wager.models.fields import Field
from wager.prediction import Prediction
from wager.recommender import Recommender
from wager.uncertainty.calibration import PlattScaling
from wager.uncertainty.cold_start import (
    centre_oov,
    draw_known_rows,
    oov_rows,
    population_batch,
)

KEY = "user.vectors.user__uid.weight"


def test_centre_oov_by_hand_and_learned_rows_kept():
    # rows 1..3 hold 1, 2, 4 (centre 7/3); OOV row 0 holds 10 (member 0) and 20 (member 1)
    table = torch.tensor([[[10.0], [1.0], [2.0], [4.0]], [[20.0], [1.0], [2.0], [6.0]]])
    field = [Field("user.uid", "index", 4)]
    p = {KEY: table.clone()}
    assert centre_oov(p, field) == [KEY]
    np.testing.assert_allclose(p[KEY][:, 0, 0].numpy(), [7 / 3, 3.0], rtol=1e-6)
    torch.testing.assert_close(p[KEY][:, 1:], table[:, 1:])
    p = {KEY: table.clone()}
    assert centre_oov(p, field, learned=frozenset({"user.uid"})) == []
    torch.testing.assert_close(p[KEY], table)


def test_centre_oov_bag_keeps_padding_and_leaves_numeric_and_other_tensors():
    bag = torch.arange(2 * 5 * 2, dtype=torch.float32).reshape(2, 5, 2)  # pad 0, OOV 1
    lin, other = torch.ones(2, 3, 4), torch.zeros(2, 7)
    p = {
        "m.vectors.item__tags.weight": bag.clone(),
        "m.vectors.item__price.weight": lin.clone(),
        "m.deep.0.weight": other.clone(),
    }
    fields = [Field("item.tags", "bag", 5), Field("item.price", "numeric", 4)]
    assert centre_oov(p, fields) == ["m.vectors.item__tags.weight"]
    out = p["m.vectors.item__tags.weight"]
    torch.testing.assert_close(out[:, 0], bag[:, 0])
    torch.testing.assert_close(out[:, 1], bag[:, 2:].mean(dim=1))  # OOV = mean of 2..4
    torch.testing.assert_close(out[:, 2:], bag[:, 2:])
    torch.testing.assert_close(p["m.vectors.item__price.weight"], lin)
    torch.testing.assert_close(p["m.deep.0.weight"], other)


def test_draw_known_rows_ranges_reproducible_and_uniform():
    fields = [
        Field("user.uid", "index", 4),
        Field("item.tags", "bag", 6),
        Field("item.price", "numeric", 3),
        Field("user.empty", "index", 1),  # only the OOV row: nothing to draw
    ]
    a = draw_known_rows(fields, 3, 2000, torch.Generator().manual_seed(7))
    b = draw_known_rows(fields, 3, 2000, torch.Generator().manual_seed(7))
    assert set(a) == {"user.uid", "item.tags"}
    assert a["user.uid"].shape == (3, 2000) and a["user.uid"].dtype == torch.int64
    torch.testing.assert_close(a["user.uid"], b["user.uid"])
    assert set(a["user.uid"].unique().tolist()) == {1, 2, 3}
    assert set(a["item.tags"].unique().tolist()) == {2, 3, 4, 5}
    counts = np.bincount(a["user.uid"].flatten().numpy(), minlength=4)[1:]
    assert np.all(np.abs(counts / 6000 - 1 / 3) < 0.03)  # 5 sigma ~ 0.03
    with pytest.raises(ValueError, match="draws must be >= 1"):
        draw_known_rows(fields, 3, 0, torch.Generator())


def test_oov_rows_and_population_batch_by_hand():
    batch = {
        "user.uid": torch.tensor([0, 2, 1]),
        "item.tags": torch.tensor([[1, 3, 0], [2, 0, 0], [0, 0, 0]]),  # 1 = OOV, 0 = pad
        "item.price": torch.tensor([[0.5], [1.5], [2.5]]),
    }
    picks = {
        "user.uid": torch.tensor([[1, 2], [3, 1]]),  # (M=2, K=2)
        "item.tags": torch.tensor([[4, 5], [6, 7]]),
    }
    assert oov_rows(batch, picks).tolist() == [True, False, False]
    assert oov_rows(batch, {"item.tags": picks["item.tags"]}).tolist() == [True, False, False]
    out = population_batch(batch, picks)
    assert out["user.uid"].shape == (2, 6) and out["item.tags"].shape == (2, 6, 3)
    # draw-major: entries k * 3 + b
    assert out["user.uid"].tolist() == [[1, 2, 1, 2, 2, 1], [3, 2, 1, 1, 2, 1]]
    assert out["item.tags"][0, 0].tolist() == [4, 3, 0]  # member 0 draw 0
    assert out["item.tags"][0, 3].tolist() == [5, 3, 0]  # member 0 draw 1
    assert out["item.tags"][1, 3].tolist() == [7, 3, 0]  # member 1 draw 1
    assert out["item.tags"][1, 4].tolist() == [2, 0, 0]  # known rows untouched
    torch.testing.assert_close(out["item.price"][1, 5], batch["item.price"][2])


def test_from_members_adds_the_population_variance_to_the_epistemic_part():
    means = torch.tensor([[0.1, 0.3], [0.3, 0.3]])  # member var 0.01 and 0
    pred = Prediction.from_members(means, population_var=torch.tensor([0.0, 0.04]))
    np.testing.assert_allclose(pred.std.numpy(), [0.1, 0.2], rtol=1e-6)
    np.testing.assert_allclose(pred.epistemic_std.numpy(), [0.1, 0.2], rtol=1e-6)
    np.testing.assert_allclose(pred.mean.numpy(), [0.2, 0.3], rtol=1e-6)


def test_calibrator_maps_the_population_spread_by_its_secant():
    platt = PlattScaling()
    platt.slope_, platt.intercept_ = 2.0, 0.5
    means = torch.tensor([[0.2, 0.4], [0.2, 0.4]], dtype=torch.float64)  # no member spread
    pred = Prediction.from_members(
        means, population_var=torch.tensor([0.0, 0.01], dtype=torch.float64), support=(0, 1)
    )
    out = platt.calibrate(pred)

    def f(p: float) -> float:
        return 1 / (1 + math.exp(-(2.0 * math.log(p / (1 - p)) + 0.5)))

    assert float(out.std[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(out.std[1]) == pytest.approx((f(0.5) - f(0.3)) / 2, rel=1e-6)
    assert float(out.mean[1]) == pytest.approx(f(0.4), rel=1e-6)


def _clicks(n: int, seed: int) -> pd.DataFrame:
    """40 users x 30 items with strong per-user click rates (0.05 .. 0.6)."""
    rng = np.random.default_rng(seed)
    u, i = rng.integers(0, 40, n), rng.integers(0, 30, n)
    p = np.linspace(0.05, 0.6, 40)[u]
    return pd.DataFrame({"user_id": u, "item_id": i, "click": (rng.random(n) < p).astype(float)})


def _config(cold_start: str, members: int = 4, **unc: object) -> RunConfig:
    return RunConfig(
        schema=Schema(label="click", label_kind="click"),
        model=ModelConfig(type="factorization", dim=4, init_std=0.05),
        training=TrainConfig(epochs=15, batch_size=256, learning_rate=0.05, patience=3),
        ensemble=EnsembleConfig(members=members, bootstrap=True) if members > 1 else None,
        uncertainty=UncertaintyConfig(cold_start=cold_start, **unc),  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def population_model() -> Recommender:
    return Recommender(_config("population", population_draws=6)).fit(
        _clicks(6000, 0), _clicks(1000, 1)
    )


def test_facade_unknown_users_come_out_less_certain_with_population_draws(population_model):
    items = list(range(30)) * 10
    learned = Recommender(_config("learned")).fit(_clicks(6000, 0), _clicks(1000, 1))
    ratio = {}
    for mode, rec in (("learned", learned), ("population", population_model)):
        known = rec.predict(list(range(40)) * 7 + list(range(20)), items)
        cold = rec.predict(["nobody"] * 300, items)
        ratio[mode] = float(cold.std.median() / known.std.median())
    # users differ a lot (click rates 0.05..0.6): a random user is far less certain than a
    # known one once the population's spread is part of the prediction
    assert ratio["population"] > 1.5
    assert ratio["population"] > ratio["learned"]


def test_facade_population_prediction_equals_a_loop_over_members_and_draws(population_model):
    rec = population_model
    stack, picks = rec.scorer_.stack, rec.scorer_.population_picks
    assert stack is not None and picks is not None
    users = [3, "nobody", 17, "nobody"]
    items = [0, 5, 5, 29]
    got = rec.scorer_.prediction(users, items)[0]
    batch = rec.scorer_.encode_pairs(users, items)
    m, k = picks["user.user_id"].shape
    assert (m, k) == (4, 6)
    draws = np.zeros((m, k, len(users)))
    with torch.no_grad():
        for mm in range(m):
            for kk in range(k):
                b = dict(batch)
                uid = b["user.user_id"].clone()
                uid[uid == 0] = picks["user.user_id"][mm, kk]
                b["user.user_id"] = uid
                means, _ = rec.scorer_.head_moments(stack.call("forward", b))
                draws[mm, kk] = means[mm].numpy()
    member = draws.mean(axis=1)  # (M, B)
    np.testing.assert_allclose(got.samples.numpy(), member, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.mean.numpy(), draws.mean(axis=(0, 1)), rtol=1e-5, atol=1e-7)
    # variance over all M * K draws; known users: over the M members (draws identical)
    total = draws.reshape(m * k, -1).std(axis=0)
    np.testing.assert_allclose(got.std.numpy(), total, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(got.std.numpy()[[0, 2]], member.std(axis=0)[[0, 2]], rtol=1e-4)


def test_population_rows_in_small_passes_equal_one_pass(population_model, monkeypatch):
    users, items = ["nobody", 1, "x", "y", 5], [0, 1, 2, 3, 4]
    one = population_model.scorer_.prediction(users, items)[0]
    monkeypatch.setattr("wager.recommender.scoring.POPULATION_ROWS", 6)  # K = 6: one row per pass
    small = population_model.scorer_.prediction(users, items)[0]
    torch.testing.assert_close(small.mean, one.mean)
    torch.testing.assert_close(small.std, one.std)


def test_population_draws_survive_save_and_load(population_model, tmp_path):
    population_model.save(tmp_path / "run")
    back = Recommender.load(tmp_path / "run")
    a = population_model.predict(["nobody", 2], [4, 4])
    b = back.predict(["nobody", 2], [4, 4])
    torch.testing.assert_close(a.mean, b.mean)
    torch.testing.assert_close(a.std, b.std)


def test_population_needs_an_ensemble_without_mc_dropout():
    with pytest.raises(ValueError, match=r"cold_start = 'population'.*members >= 2"):
        Recommender(_config("population", members=1)).fit(_clicks(500, 0), _clicks(100, 1))
    cfg = _config("population", mc_dropout_samples=4)
    cfg = RunConfig(
        schema=cfg.schema,
        model=ModelConfig(type="dcn", dim=4, hidden=(4,), dropout=0.1),
        training=cfg.training,
        ensemble=cfg.ensemble,
        uncertainty=cfg.uncertainty,
    )
    with pytest.raises(ValueError, match=r"no mc_dropout_samples"):
        Recommender(cfg).fit(_clicks(500, 0), _clicks(100, 1))
    with pytest.raises(ValueError, match=r"\[uncertainty\] cold_start"):
        UncertaintyConfig(cold_start="prior")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"population_draws"):
        UncertaintyConfig(population_draws=0)
