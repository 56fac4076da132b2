"""The facade's mixture density likelihoods: ``[model] likelihood = "mdn"`` / ``"ddn"``
(DCN ranker on aggregated CTR rows), their pooled predictive mixture and their errors."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wager.config import EnsembleConfig, ModelConfig, RunConfig, TrainConfig
from wager.data.schema import Schema
from wager.data.synthetic import SyntheticWorld, WorldConfig
from wager.evaluation.uncertainty import mixture_crps
from wager.models.heads import DeepDensityHead, MixtureDensityHead
from wager.prediction import MixturePrediction
from wager.recommender import Recommender
from wager.runs import RunError
from wager.uncertainty.calibration import PlattScaling

# aggregated rows: the context group (segment|country) plays the user role
CTR = Schema(
    user="context_id", label="ctr", label_kind="ctr", impressions="impressions", clicks="clicks"
)
K = 2  # mixture components per member
M = 2  # ensemble members


@pytest.fixture(scope="module")
def rows() -> tuple[pd.DataFrame, pd.DataFrame]:
    """200 distinct (item, group) rows of a small world (base CTR 0.3 keeps the predicted
    CTRs well inside (0, 1)), impressions log-uniform on 1..200; 160 train, 40 valid."""
    world = SyntheticWorld(
        WorldConfig(n_users=300, n_items=20, n_days=1, new_items_per_day=0, base_ctr=0.3, seed=3)
    )
    agg = world.aggregate(200, seed=4, min_impressions=1, max_impressions=200)
    return agg.iloc[:160].reset_index(drop=True), agg.iloc[160:].reset_index(drop=True)


def _config(
    likelihood: str,
    schema: Schema = CTR,
    members: int | None = M,
    model_type: str = "dcn",
    epochs: int = 30,
) -> RunConfig:
    return RunConfig(
        schema=schema,
        model=ModelConfig(
            type=model_type,  # type: ignore[arg-type]
            dim=4,
            hidden=(8,),
            cross_layers=1,
            likelihood=likelihood,  # type: ignore[arg-type]
            components=K,
        ),
        training=TrainConfig(epochs=epochs, batch_size=32, learning_rate=0.01, patience=30),
        ensemble=EnsembleConfig(members=members, bootstrap=False) if members else None,
    )


@pytest.fixture(scope="module", params=["mdn", "ddn"])
def fitted(request, rows) -> tuple[Recommender, pd.DataFrame]:
    train, valid = rows
    return Recommender(_config(request.param)).fit(train, valid), valid


def _member_components(
    rec: Recommender, valid: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each member's mixture from its raw (M, B, 3K) outputs, mapped in NumPy:
    weights = softmax(logits), means as they are, stds = softplus(raw) + min_std."""
    batch = rec.scorer_.encode_pairs(valid["context_id"], valid["item_id"])
    with torch.no_grad():
        out = rec.scorer_.stack.call("forward", batch).double().numpy()  # type: ignore[union-attr]
    assert out.shape == (M, len(valid), 3 * K)
    logits, means, raw = out[..., :K], out[..., K : 2 * K], out[..., 2 * K :]
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    stds = np.logaddexp(0.0, raw) + rec.head.min_std
    return w, means, stds


def test_head_follows_the_likelihood_and_components(fitted):
    rec, _ = fitted
    expected = MixtureDensityHead if rec.config.model.likelihood == "mdn" else DeepDensityHead
    assert isinstance(rec.head, expected)
    assert rec.head.components == K and rec.head.support == (0.0, 1.0)


def test_predict_gives_a_ctr_with_positive_std(fitted):
    rec, valid = fitted
    pred = rec.predict(valid["context_id"], valid["item_id"])
    assert pred.mean.shape == (len(valid),) and pred.std is not None
    assert torch.isfinite(pred.mean).all() and torch.isfinite(pred.std).all()
    assert ((pred.mean >= 0) & (pred.mean <= 1)).all()
    assert (pred.std > 0).all()
    assert pred.aleatoric_std is not None and pred.epistemic_std is not None
    # std^2 = aleatoric^2 + epistemic^2 (law of total variance)
    torch.testing.assert_close(
        pred.std.square(), pred.aleatoric_std.square() + pred.epistemic_std.square()
    )


def test_predict_mixture_pools_the_members_by_hand(fitted):
    rec, valid = fitted
    w, mu, s = _member_components(rec, valid)  # each (M, B, K)
    member_mean = (w * mu).sum(-1)  # (M, B)
    member_var = (w * (s**2 + (mu - member_mean[..., None]) ** 2)).sum(-1)
    # the comparison with predict() below assumes no member mean is clipped to [0, 1]
    assert ((member_mean > 0) & (member_mean < 1)).all()
    mean = member_mean.mean(0)
    epistemic_var = ((member_mean - mean) ** 2).mean(0)
    total_var = member_var.mean(0) + epistemic_var

    mp = rec.predict_mixture(valid["context_id"], valid["item_id"])
    assert isinstance(mp, MixturePrediction)
    assert mp.weights.shape == (len(valid), M * K) and mp.components == M * K
    # member-major concatenation, member weights divided by M
    b = len(valid)
    np.testing.assert_allclose(
        mp.weights.numpy(), (w / M).transpose(1, 0, 2).reshape(b, M * K), rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(mp.means.numpy(), mu.transpose(1, 0, 2).reshape(b, M * K), 1e-5)
    np.testing.assert_allclose(mp.stds.numpy(), s.transpose(1, 0, 2).reshape(b, M * K), 1e-5)
    np.testing.assert_allclose(mp.mean.numpy(), mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(mp.std.numpy(), np.sqrt(total_var), rtol=1e-5, atol=1e-7)
    assert mp.epistemic_std is not None and mp.aleatoric_std is not None
    np.testing.assert_allclose(mp.epistemic_std.numpy(), np.sqrt(epistemic_var), rtol=1e-4)
    np.testing.assert_allclose(
        mp.aleatoric_std.numpy(), np.sqrt(member_var.mean(0)), rtol=1e-4, atol=1e-6
    )
    assert mp.measurement_std is None and mp.support == (0.0, 1.0)

    # predict() returns this very mixture (members' means kept as samples); the moments
    # the other code paths (oov_std_ratios) pool from the members agree with it
    pred = rec.predict(valid["context_id"], valid["item_id"])
    assert isinstance(pred, MixturePrediction)
    for name in ("mean", "std", "weights", "means", "stds"):
        torch.testing.assert_close(getattr(pred, name), getattr(mp, name))
    np.testing.assert_allclose(pred.samples.numpy(), member_mean, rtol=1e-5, atol=1e-7)
    moments = rec.scorer_.prediction(valid["context_id"], valid["item_id"])[0]
    torch.testing.assert_close(mp.mean, moments.mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(mp.std, moments.std, rtol=1e-5, atol=1e-6)


def test_evaluate_scores_the_mixture(fitted):
    # evaluate's CRPS and interval coverage are the mixture's, not a Gaussian's with the
    # same moments: CRPS by the mixture closed form, coverage of the mixture-CDF intervals
    rec, valid = fitted
    m = rec.evaluate(valid)
    mp = rec.predict_mixture(valid["context_id"], valid["item_id"])
    y = valid["ctr"].to_numpy(dtype=np.float64)
    crps = mixture_crps(
        mp.weights.double().numpy(), mp.means.double().numpy(), mp.stds.double().numpy(), y
    )
    assert m["crps"] == pytest.approx(crps, rel=1e-5)
    iv = mp.interval(0.9)
    inside = (y >= iv.low.numpy()) & (y <= iv.high.numpy())
    assert m["coverage@0.9"] == pytest.approx(inside.mean())


def test_validation_metric_is_the_impression_weighted_squared_error(fitted):
    rec, valid = fitted
    hist = rec.history_
    # the best epoch's parameters are restored, so the members' means now are the ones
    # the validator scored at that epoch: sum n (mean - ctr)^2 / sum n per member
    member_means = rec.predict(valid["context_id"], valid["item_id"]).samples.double().numpy()
    n = valid["impressions"].to_numpy(dtype=float)
    ctr = valid["clicks"].to_numpy(dtype=float) / n
    by_hand = ((member_means - ctr) ** 2 * n).sum(-1) / n.sum()
    logged = [hist.valid_metric[e][m] for m, e in enumerate(hist.best_epoch)]
    np.testing.assert_allclose(logged, by_hand, rtol=1e-4)


def test_ddn_measurement_std_is_binomial_at_the_pooled_mean(rows):
    train, valid = rows
    rec = Recommender(_config("ddn", epochs=5)).fit(train, valid)
    n = valid["impressions"].to_numpy()
    mp = rec.predict_mixture(valid["context_id"], valid["item_id"], impressions=n)
    assert mp.measurement_std is not None
    m = mp.mean.double().numpy()
    assert ((m > 1e-6) & (m < 1 - 1e-6)).all()  # the head's clamp does not act
    # binomial std of an observed CTR over n impressions, e.g. m = 0.2, n = 100:
    # sqrt(0.2 * 0.8 / 100) = 0.04
    np.testing.assert_allclose(mp.measurement_std.numpy(), np.sqrt(m * (1 - m) / n), rtol=1e-5)
    # the measurement noise is reported apart: mean and std do not depend on it
    plain = rec.predict_mixture(valid["context_id"], valid["item_id"])
    assert plain.measurement_std is None
    torch.testing.assert_close(plain.std, mp.std)
    with pytest.raises(ValueError, match=r"impressions must have shape \(40,\)"):
        rec.predict_mixture(valid["context_id"], valid["item_id"], impressions=n[:3])
    with pytest.raises(ValueError, match="impressions must be counts >= 1"):
        rec.predict_mixture(valid["context_id"], valid["item_id"], impressions=n * 0)


def test_single_model_mixture_is_the_head_mixture(rows):
    train, valid = rows
    rec = Recommender(_config("mdn", members=None, epochs=5)).fit(train, valid)
    mp = rec.predict_mixture(valid["context_id"], valid["item_id"])
    pred = rec.predict(valid["context_id"], valid["item_id"])
    assert mp.components == K and mp.epistemic_std is None
    torch.testing.assert_close(mp.mean, pred.mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(mp.std, pred.std)
    with pytest.raises(ValueError, match="impressions apply to \\[model\\] likelihood = 'ddn'"):
        rec.predict_mixture(valid["context_id"], valid["item_id"], impressions=[5] * len(valid))


@pytest.fixture(scope="module")
def mdn_small(rows) -> Recommender:
    train, valid = rows
    return Recommender(_config("mdn", epochs=3)).fit(train, valid)


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_predict_mixture_batch_equals_single(rows, mdn_small, data):
    _, valid = rows
    rec = mdn_small
    idx = data.draw(st.lists(st.integers(0, len(valid) - 1), min_size=1, max_size=12))
    batch_size = data.draw(st.integers(1, 5))
    u, i = valid["context_id"].to_numpy(), valid["item_id"].to_numpy()
    whole = rec.predict_mixture(u, i)
    part = rec.predict_mixture(u[idx], i[idx], batch_size=batch_size)
    torch.testing.assert_close(part.weights, whole.weights[idx])
    torch.testing.assert_close(part.means, whole.means[idx])
    torch.testing.assert_close(part.std, whole.std[idx])


def test_save_load_round_trip(fitted, tmp_path):
    rec, valid = fitted
    rec.save(tmp_path)
    back = Recommender.load(tmp_path)
    assert back.config.model.likelihood == rec.config.model.likelihood
    assert back.config.model.components == K
    u, i = valid["context_id"], valid["item_id"]
    a, b = rec.predict(u, i), back.predict(u, i)
    torch.testing.assert_close(b.mean, a.mean)
    torch.testing.assert_close(b.std, a.std)
    ma, mb = rec.predict_mixture(u, i), back.predict_mixture(u, i)
    torch.testing.assert_close(mb.weights, ma.weights)
    torch.testing.assert_close(mb.means, ma.means)
    torch.testing.assert_close(mb.stds, ma.stds)


def test_load_refuses_a_tampered_mixture_run_with_a_probability_calibrator(fitted, tmp_path):
    # a run edited by hand to carry one: the manifest's checksums refuse it
    rec, _ = fitted
    rec.save(tmp_path)
    cfg = (tmp_path / "config.toml").read_text()
    (tmp_path / "config.toml").write_text(
        cfg.replace('calibrator = "none"', 'calibrator = "platt"')
    )
    post = json.loads((tmp_path / "uncertainty.json").read_text())
    platt = PlattScaling().fit(torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0, 0, 1, 1.0]))
    post["calibrator"] = platt.state_dict()
    (tmp_path / "uncertainty.json").write_text(json.dumps(post))
    with pytest.raises(RunError, match=r"corrupt \(checksum differs\): config.toml, uncertainty"):
        Recommender.load(tmp_path)


RATING = Schema(user="context_id", label="ctr", label_kind="rating", rating_range=(0.0, 1.0))
NO_IMPRESSIONS = Schema(user="context_id", label="ctr", label_kind="ctr")


@pytest.mark.parametrize(
    ("likelihood", "schema", "model_type", "drop", "message"),
    [
        ("mdn", RATING, "dcn", None, r"likelihood = 'mdn' models a click-through rate"),
        ("ddn", NO_IMPRESSIONS, "dcn", None, r"Schema\.impressions is not set"),
        ("ddn", CTR, "dcn", "impressions", r"needs the impressions column 'impressions'"),
    ],
)
def test_fit_rejects_likelihoods_the_model_or_data_cannot_take(
    rows, likelihood, schema, model_type, drop, message
):
    train, _ = rows
    if drop is not None:
        train = train.drop(columns=[drop])
    rec = Recommender(_config(likelihood, schema=schema, model_type=model_type, epochs=1))
    with pytest.raises(ValueError, match=message):
        rec.fit(train)


@pytest.mark.parametrize(
    ("model_type", "likelihood", "message"),
    [
        (
            "biased_mf",
            "mdn",
            r"\[model\] likelihood = 'mdn' is invalid: must be 'point' or 'gaussian' for type = "
            r"'biased_mf'.*\(\[model\] type = 'dcn'\)",
        ),
        (
            "factorization",
            "ddn",
            r"\[model\] likelihood = 'ddn' is not used by type = 'factorization'.*'dcn'",
        ),
    ],
)
def test_config_rejects_a_mixture_likelihood_of_another_model_type(model_type, likelihood, message):
    # the mixture heads belong to the DCN ranker: refused when the config is built
    with pytest.raises(ValueError, match=message):
        ModelConfig(type=model_type, likelihood=likelihood)  # type: ignore[arg-type]


@pytest.mark.parametrize("likelihood", ["mdn", "ddn"])
def test_fit_rejects_a_probability_calibrator_on_a_mixture(rows, likelihood):
    # a Platt / isotonic / temperature map of the mean would leave the mixture's components
    # and intervals uncalibrated: refused before training, naming both settings
    train, valid = rows
    cfg = _config(likelihood, epochs=1)
    cfg = replace(cfg, uncertainty=replace(cfg.uncertainty, calibrator="platt"))
    with pytest.raises(
        ValueError, match=rf"calibrator = 'platt'.*likelihood = '{likelihood}'.*calibrator = 'none'"
    ):
        Recommender(cfg).fit(train, valid)


def test_predict_mixture_needs_a_mixture_likelihood(rows):
    train, valid = rows
    rec = Recommender(_config("point", members=None, epochs=1)).fit(train)
    with pytest.raises(ValueError, match=r"predict_mixture needs a mixture likelihood.*'point'"):
        rec.predict_mixture(valid["context_id"], valid["item_id"])


def test_model_config_validates_components_and_round_trips(tmp_path):
    with pytest.raises(ValueError, match=r"\[model\] components = 0 is invalid"):
        ModelConfig(type="dcn", components=0)
    with pytest.raises(ValueError, match=r"\[model\] likelihood = 'beta' is invalid.*'ddn'"):
        ModelConfig(likelihood="beta")  # type: ignore[arg-type]
    cfg = RunConfig(schema=CTR, model=ModelConfig(type="dcn", likelihood="ddn", components=4))
    cfg.save(tmp_path / "run.toml")
    assert RunConfig.load(tmp_path / "run.toml") == cfg
