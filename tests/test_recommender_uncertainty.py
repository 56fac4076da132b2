"""The facade's confidence: calibrators fitted on validation rows, conformal intervals,
uncertainty metrics and plots in evaluate(), relevance confidence in recommend()."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from wager.config import (
    EnsembleConfig,
    EvaluationConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    UncertaintyConfig,
)
from wager.data.schema import Schema
from wager.recommender import Recommender
from wager.uncertainty.conformal import ConformalPrediction

RATING = Schema(label="rating", label_kind="rating", rating_range=(1.0, 5.0))
CLICK = Schema(label="click", label_kind="click")


def _ratings(n: int, seed: int) -> pd.DataFrame:
    """30 users x 20 items; rating = 3 + user effect + item effect + noise whose std
    depends on the user (0.2 for even users, 1.0 for odd ones): heteroscedastic."""
    rng = np.random.default_rng(seed)
    u, i = rng.integers(0, 30, n), rng.integers(0, 20, n)
    ue = np.linspace(-1, 1, 30)[u]
    ie = np.linspace(-0.5, 0.5, 20)[i]
    noise = np.where(u % 2 == 0, 0.2, 1.0) * rng.standard_normal(n)
    r = np.clip(3 + ue + ie + noise, 1, 5)
    return pd.DataFrame({"user_id": u, "item_id": i, "rating": r})


def _rating_config(**uncertainty) -> RunConfig:
    return RunConfig(
        schema=RATING,
        model=ModelConfig(type="biased_mf", dim=2, likelihood="gaussian", init_std=0.05),
        training=TrainConfig(
            epochs=40, batch_size=256, learning_rate=0.03, optimizer="adam", patience=4
        ),
        ensemble=EnsembleConfig(members=3, bootstrap=False),
        evaluation=EvaluationConfig(k=3, relevance_threshold=4.0, top_k_accuracy=(1,)),
        uncertainty=UncertaintyConfig(**uncertainty),
    )


@pytest.fixture(scope="module")
def conformal_run():
    train, valid, test = _ratings(4000, 0), _ratings(1500, 1), _ratings(3000, 2)
    rec = Recommender(_rating_config(conformal="normalized")).fit(train, valid)
    return rec, test


def test_conformal_intervals_cover_at_the_nominal_level(conformal_run):
    rec, test = conformal_run
    pred = rec.predict(test["user_id"], test["item_id"])
    assert isinstance(pred, ConformalPrediction)
    y = torch.tensor(test["rating"].to_numpy(), dtype=torch.float32)
    cover = pred.interval(0.9).contains(y).float().mean().item()
    # exchangeable calibration (1500 rows) and test rows: coverage ~ 0.9; 3000 test rows
    # give a binomial se of 0.0055, the finite calibration set adds about as much
    assert 0.87 <= cover <= 0.93
    # normalized scores: the interval adapts: noisy (odd) users get wider intervals
    width = pred.interval(0.9).width.numpy()
    odd = test["user_id"].to_numpy() % 2 == 1
    assert width[odd].mean() > 1.5 * width[~odd].mean()


def test_evaluate_reports_uncertainty_keys_and_plots(conformal_run, tmp_path):
    rec, test = conformal_run
    m = rec.evaluate(test, plots_dir=tmp_path)
    for key in (
        "nll",
        "crps",
        "coverage@0.5",
        "coverage@0.8",
        "coverage@0.9",
        "coverage@0.95",
        "width@0.9",
        "spearman_std_abs_error",
        "auroc_std_error",
        "rmse_most_confident_50pct",
        "predict_seconds",
    ):
        assert np.isfinite(m[key]), key
    # ratings: ece / mce / brier calibrate P(rating >= relevance_threshold) against hits
    pred = rec.predict(test["user_id"].to_numpy(), test["item_id"].to_numpy())
    prob = rec.relevance_confidence(pred).numpy().astype(np.float64)
    hit = (test["rating"].to_numpy() >= 4.0).astype(np.float64)
    assert m["brier"] == pytest.approx(float(np.mean((prob - hit) ** 2)), rel=1e-6)
    assert 0 <= m["ece"] <= m["mce"] <= 1
    assert "relevance_reliability_diagram" in m["plots"]
    assert m["rmse_most_confident_50pct"] < m["rmse"]  # std tracks the error
    assert set(m["oov_std_ratio"]) == {"user.user_id", "item.item_id"}
    for name, file in m["plots"].items():
        assert (tmp_path / file).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_recommend_confidence_and_list_summary(conformal_run):
    rec, _ = conformal_run
    recs = rec.recommend([0, 1], k=3, exclude_seen=False)  # they rated every item
    assert len(recs) == 6 and recs["confidence"].between(0, 1).all()
    lists = rec.list_confidence(recs)
    want = recs.groupby("user", sort=False)["confidence"].sum().to_numpy()
    np.testing.assert_allclose(lists["expected_hits"].to_numpy(), want)
    first = recs["user"].iloc[0]
    p = recs.loc[recs["user"] == first, "confidence"].to_numpy()
    # 1 - prod(1 - p), in the form that keeps tiny probabilities (1 - p rounds to 1)
    assert lists.loc[0, "prob_at_least_one"] == pytest.approx(-np.expm1(np.log1p(-p).sum()))


def test_save_load_keeps_the_calibrators(conformal_run, tmp_path):
    rec, test = conformal_run
    rec.save(tmp_path / "run")
    back = Recommender.load(tmp_path / "run")
    a = rec.predict(test["user_id"][:50], test["item_id"][:50]).interval(0.9)
    b = back.predict(test["user_id"][:50], test["item_id"][:50]).interval(0.9)
    torch.testing.assert_close(a.low, b.low)
    torch.testing.assert_close(a.high, b.high)
    assert back.chain_.relevance is not None


def _clicks(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    u, i = rng.integers(0, 40, n), rng.integers(0, 25, n)
    logit = np.linspace(-2, 1, 40)[u] + np.linspace(-1, 1, 25)[i]
    click = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    return pd.DataFrame({"user_id": u, "item_id": i, "click": click})


@pytest.mark.parametrize("calibrator", ["platt", "isotonic", "temperature"])
def test_click_calibrators_are_fitted_saved_and_reported(calibrator, tmp_path):
    cfg = RunConfig(
        schema=CLICK,
        model=ModelConfig(type="factorization", dim=2),
        training=TrainConfig(epochs=5, batch_size=256, learning_rate=0.05, optimizer="adam"),
        evaluation=EvaluationConfig(k=3, relevance_threshold=1.0, top_k_accuracy=(1,)),
        uncertainty=UncertaintyConfig(calibrator=calibrator),
    )
    rec = Recommender(cfg).fit(_clicks(3000, 0), _clicks(1500, 1))
    assert rec.chain_.calibrator is not None
    assert f"+{calibrator}" in rec.predict([0], [0]).method
    m = rec.evaluate(_clicks(2000, 2))
    for key in ("ece", "ece_equal_width", "mce", "brier", "nll"):
        assert np.isfinite(m[key]), key
    rec.save(tmp_path / "run")
    back = Recommender.load(tmp_path / "run")
    torch.testing.assert_close(rec.predict([1, 2], [3, 4]).mean, back.predict([1, 2], [3, 4]).mean)


@pytest.mark.parametrize(
    ("config", "valid", "fragment"),
    [
        (_rating_config(conformal="normalized"), False, r"valid_fraction > 0"),
        (
            RunConfig(
                schema=RATING,
                model=ModelConfig(type="biased_mf", dim=2),
                uncertainty=UncertaintyConfig(conformal="normalized"),
            ),
            True,
            r"needs? a predicted std.*homoscedastic",
        ),
        (_rating_config(calibrator="platt"), True, r"calibrator = 'platt' calibrates click"),
    ],
)
def test_post_hoc_misuse_says_how_to_fix(config, valid, fragment):
    train = _ratings(600, 0)
    cfg = RunConfig(
        schema=config.schema,
        model=config.model,
        training=TrainConfig(epochs=1, batch_size=256),
        ensemble=config.ensemble,
        uncertainty=config.uncertainty,
    )
    with pytest.raises(ValueError, match=fragment):
        Recommender(cfg).fit(train, _ratings(200, 1) if valid else None)


def test_homoscedastic_conformal_works_for_a_point_model():
    cfg = RunConfig(
        schema=RATING,
        model=ModelConfig(type="biased_mf", dim=2),
        training=TrainConfig(epochs=5, batch_size=256, learning_rate=0.03, optimizer="adam"),
        uncertainty=UncertaintyConfig(conformal="homoscedastic"),
    )
    rec = Recommender(cfg).fit(_ratings(3000, 0), _ratings(1000, 1))
    test = _ratings(500, 2)
    pred = rec.predict(test["user_id"], test["item_id"])
    assert pred.std is None  # still deterministic; the interval has one constant width
    iv = pred.interval(0.9)
    q = rec.chain_.conformal.score_quantile(0.9)
    unclipped = ((iv.low > 1) & (iv.high < 5)).numpy()
    assert unclipped.sum() > 50
    np.testing.assert_allclose((iv.high - iv.low).numpy()[unclipped], 2 * q, rtol=1e-5)
    # recommend reports the same constant-width interval (no std needed)
    recs = rec.recommend([0, 1, 2], k=4, exclude_seen=False)  # every item is seen
    again = rec.predict(recs["user"].tolist(), recs["item"].tolist()).interval(0.9)
    np.testing.assert_allclose(recs["low"].to_numpy(), again.low.numpy(), rtol=1e-6)
    np.testing.assert_allclose(recs["high"].to_numpy(), again.high.numpy(), rtol=1e-6)
    assert len(recs) == 12 and recs["std"].isna().all()


def test_oov_rate_trains_the_oov_rows_and_widens_cold_start(monkeypatch):
    from wager.training.trainer import StackedModel

    seen_frac = []
    original = StackedModel.call_weighted

    def spy(self, method, batch, weights, **kw):
        seen_frac.append(float((batch["user.user_id"] == 0).float().mean()))
        return original(self, method, batch, weights, **kw)

    monkeypatch.setattr(StackedModel, "call_weighted", spy)
    base = _rating_config()
    cfg = RunConfig(
        schema=RATING,
        model=ModelConfig(
            type="biased_mf", dim=2, likelihood="gaussian", init_std=0.05, oov_rate=0.2
        ),
        training=base.training,
        ensemble=base.ensemble,
        evaluation=base.evaluation,
    )
    train = _ratings(4000, 0)
    rec = Recommender(cfg).fit(train, _ratings(1000, 1))
    # every training user is known, so id 0 appears only through the replacement:
    # about 20% of the rows (4000 rows per epoch: se of the mean share ~0.0063 / sqrt(epochs))
    assert abs(np.mean(seen_frac) - 0.2) < 0.02
    # the OOV rows moved away from their initialisation and carry the cold-start noise:
    # an unknown user's predicted std exceeds the average known user's (the Gaussian head
    # learned the spread over all users for the OOV row)
    known = rec.predict(train["user_id"][:500], train["item_id"][:500])
    cold = rec.predict(["nobody"] * 500, train["item_id"][:500])
    assert float(cold.std.mean()) > float(known.std.mean())


def test_platt_with_a_negative_slope_warns_that_the_order_is_reversed():
    # training: users 0..19 click 40% of the time, users 20..39 2%; validation: the reverse
    def log(n: int, high: range, seed: int) -> pd.DataFrame:
        g = np.random.default_rng(seed)
        u, i = g.integers(0, 40, n), g.integers(0, 10, n)
        p = np.where(np.isin(u, list(high)), 0.4, 0.02)
        return pd.DataFrame({"user_id": u, "item_id": i, "click": (g.random(n) < p) * 1.0})

    train, valid = log(4000, range(0, 20), 1), log(1500, range(20, 40), 2)
    cfg = RunConfig(
        schema=CLICK,
        model=ModelConfig(type="factorization", dim=2, init_std=0.05),
        training=TrainConfig(epochs=10, batch_size=256, learning_rate=0.05, patience=10),
        uncertainty=UncertaintyConfig(calibrator="platt"),
        seed=0,
    )
    with pytest.warns(UserWarning, match=r"negative slope .* 1500 validation rows"):
        rec = Recommender(cfg).fit(train, valid)
    assert rec.chain_.calibrator.slope_ < 0


@pytest.fixture(scope="module")
def local_variance_run():
    train, valid, test = _ratings(4000, 0), _ratings(1500, 1), _ratings(3000, 2)
    cfg = _rating_config(conformal="normalized", local_variance=True)
    return Recommender(cfg).fit(train, valid), train, valid, test


def test_local_variance_is_fitted_on_half_the_validation_rows_and_conformal_on_the_rest(
    local_variance_run,
):
    rec, _train, valid, test = local_variance_run
    lv = rec.chain_.local_variance
    assert lv is not None and rec.chain_.conformal is not None
    # an ensemble of Gaussian heads splits its variance; ratings have the support 1..5; the
    # two id fields each add (log1p rows, log label std)
    assert lv.features_ == [
        "log_aleatoric_var",
        "log_epistemic_var",
        "support_z",
        "support_z2",
        "user.user_id:log1p_rows",
        "user.user_id:log_label_std",
        "item.item_id:log1p_rows",
        "item.item_id:log_label_std",
    ]
    # 1500 validation rows: the conformal scores come from the 750 the variance model never saw
    assert len(rec.chain_.conformal.scores_) == len(valid) - len(valid) // 2
    pred = rec.predict(test["user_id"], test["item_id"])
    assert isinstance(pred, ConformalPrediction)
    assert pred.method.endswith("+local_variance_scaling")
    cover = float(
        pred.interval(0.9).contains(torch.tensor(test["rating"].to_numpy())).double().mean()
    )
    # finite-sample guarantee on 750 calibration rows: mean coverage in [0.9, 0.9 + 1/751];
    # 3000 test rows add a binomial se of ~0.0055 (and the calibration draw ~0.011)
    assert 0.86 <= cover <= 0.94


def test_local_variance_covariates_are_each_ids_training_support(local_variance_run):
    rec, train, _valid, _test = local_variance_run
    # the recommender fits on the training rows; user 3's covariates by hand from them
    rows = train[train["user_id"] == 3]["rating"].to_numpy()
    s2 = float(np.var(train["rating"].to_numpy(), ddof=1))
    ss = float(np.sum((rows - rows.mean()) ** 2))
    var = (ss + 5.0 * s2) / (len(rows) - 1 + 5.0)
    raw, cov = rec.scorer_.prediction([3, "nobody"], [0, 0], covariates=rec.chain_.covariates)
    np.testing.assert_allclose(cov[0, :2], [np.log1p(len(rows)), 0.5 * np.log(var)], rtol=1e-6)
    # an unknown user: no rows, the overall spread
    np.testing.assert_allclose(cov[1, :2], [0.0, 0.5 * np.log(s2)], rtol=1e-6)
    # the facade's std is the variance model's on these covariates (then conformal widens the
    # interval, not the std)
    want = rec.chain_.local_variance.variance(raw, cov).sqrt()
    torch.testing.assert_close(rec.predict([3, "nobody"], [0, 0]).std, want.to(torch.float32))


def test_local_variance_survives_save_and_load(local_variance_run, tmp_path):
    rec, _train, _valid, test = local_variance_run
    rec.save(tmp_path / "run")
    back = Recommender.load(tmp_path / "run")
    users, items = [*test["user_id"][:40], "nobody"], [*test["item_id"][:40], 0]
    a, b = rec.predict(users, items), back.predict(users, items)
    torch.testing.assert_close(a.std, b.std)
    torch.testing.assert_close(a.interval(0.9).low, b.interval(0.9).low)


def test_local_variance_misuse_says_how_to_fix():
    with pytest.raises(ValueError, match=r"variance_scaling.*false when local_variance"):
        UncertaintyConfig(variance_scaling=True, local_variance=True)
    with pytest.raises(ValueError, match=r"\[uncertainty\] local_variance = 'yes'.*true or false"):
        UncertaintyConfig(local_variance="yes")
    cfg = RunConfig(
        schema=CLICK,
        model=ModelConfig(type="factorization", dim=2),
        training=TrainConfig(epochs=1, batch_size=256),
        uncertainty=UncertaintyConfig(calibrator="platt", local_variance=True),
    )
    with pytest.raises(ValueError, match=r"local_variance refits the std of rating"):
        Recommender(cfg).fit(_clicks(600, 0), _clicks(300, 1))


def _spy_std_histograms(monkeypatch) -> dict[str, dict]:
    """Record every std_histogram call (by file name), from plots.py and from evaluate."""
    import wager.evaluation.plots as plots

    calls: dict[str, dict] = {}
    original = plots.std_histogram

    def spy(std_known, std_oov, path, labels=("known", "OOV"), title=None):
        calls[path.name] = {
            "known": np.asarray(std_known),
            "oov": np.asarray(std_oov),
            "labels": labels,
            "title": title,
        }
        return original(std_known, std_oov, path, labels=labels, title=title)

    import wager.evaluation.report

    monkeypatch.setattr(plots, "std_histogram", spy)  # uncertainty_plots' actual-OOV plot
    monkeypatch.setattr(wager.evaluation.report, "std_histogram", spy)  # the counterfactual ones
    return calls


def test_evaluate_plots_counterfactual_oov_std_histograms(conformal_run, tmp_path, monkeypatch):
    rec, test = conformal_run
    calls = _spy_std_histograms(monkeypatch)
    m = rec.evaluate(test, plots_dir=tmp_path)
    # every test user and item is known: no actual-OOV histogram, but one counterfactual
    # histogram per id field
    assert "std_histogram" not in m["plots"]
    stds = rec.oov_stds(test)
    assert set(stds) == {"user.user_id", "item.item_id"}
    ratios = rec.oov_std_ratios(test)
    for key, field in (("user.user_id", "user_id"), ("item.item_id", "item_id")):
        name = f"std_histogram_{key.replace('.', '_')}"
        assert m["plots"][name] == f"{name}.png"
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        real, cold = stds[key]
        assert real.shape == cold.shape == (len(test),)  # all 3000 rows hold a known id
        assert np.all(real > 0) and np.all(cold > 0)
        median = float(np.median(cold / real))
        assert m["oov_std_ratio"][key] == pytest.approx(median, abs=1e-6)
        assert ratios[key] == pytest.approx(median, abs=1e-6)
        # the plot shows exactly these per-row stds, labelled, with the median in the title
        call = calls[f"{name}.png"]
        np.testing.assert_allclose(call["known"], real, rtol=1e-6)
        np.testing.assert_allclose(call["oov"], cold, rtol=1e-6)
        assert call["labels"] == (f"real {field}", f"{field} set to OOV")
        assert call["title"] == f"Predictive std, median OOV/real ratio {median:.2f}"
    # the ratios are those of the real std of each row
    pred = rec.predict(test["user_id"], test["item_id"])
    np.testing.assert_allclose(stds["user.user_id"][0], pred.std.numpy(), rtol=1e-5)


def test_evaluate_plots_actual_oov_std_for_an_unknown_item(conformal_run, tmp_path, monkeypatch):
    rec, test = conformal_run
    known = test.iloc[:400]
    unknown_item = test.iloc[400:450].assign(item_id=99)  # known users, item never trained
    rows = pd.concat([known, unknown_item], ignore_index=True)
    assert rec.known_users(rows["user_id"].to_numpy()).all()
    calls = _spy_std_histograms(monkeypatch)
    m = rec.evaluate(rows, plots_dir=tmp_path)
    assert m["plots"]["std_histogram"] == "std_histogram.png"
    assert (tmp_path / "std_histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pred = rec.predict(rows["user_id"], rows["item_id"])
    std = pred.std.numpy()
    call = calls["std_histogram.png"]
    np.testing.assert_allclose(call["known"], std[:400], rtol=1e-6)
    np.testing.assert_allclose(call["oov"], std[400:], rtol=1e-6)
    assert call["labels"] == ("user and item known", "user or item OOV")
    # the counterfactual item histogram covers only the rows whose item is known
    real, cold = rec.oov_stds(rows)["item.item_id"]
    assert real.shape == (400,)
    np.testing.assert_allclose(calls["std_histogram_item_item_id.png"]["oov"], cold, rtol=1e-6)
