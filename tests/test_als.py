"""Implicit ALS (``[model] type = "als"``): the solver against closed forms, the loop's
early stopping and resume, the config rules, and the model as a wager ensemble."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import Tensor

from wager.config import (
    ConfigError,
    EnsembleConfig,
    EvaluationConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    UncertaintyConfig,
)
from wager.data.schema import Categorical, Schema
from wager.evaluation import ranking
from wager.models.als import ImplicitALS
from wager.models.fields import Field
from wager.recommender import Recommender
from wager.recommender.spec import ModelSpec
from wager.training.als import (
    ALSSettings,
    ImplicitData,
    fit_als,
    objective,
    row_regularisation,
    solve_rows,
)
from wager.training.checkpoint import EpochReport
from wager.training.trainer import StackedModel
from wager.uncertainty.ensemble import bootstrap_weights

ALPHA, REG = 2.0, 0.1


def _counts(seed: int, members: int = 2, users: int = 7, items: int = 9) -> torch.Tensor:
    """(M, U, I) float64 play counts, about 30% of the cells observed (1 to 3 plays)."""
    g = torch.Generator().manual_seed(seed)
    seen = (torch.rand(members, users, items, generator=g) < 0.3).double()
    return seen * torch.randint(1, 4, (members, users, items), generator=g).double()


def _data(counts: torch.Tensor) -> ImplicitData:
    """Every cell as a pair (unobserved ones with weight 0), in shuffled order."""
    _, u, i = counts.shape
    rows, cols = torch.meshgrid(torch.arange(u), torch.arange(i), indexing="ij")
    order = torch.randperm(u * i, generator=torch.Generator().manual_seed(1))
    rows, cols = rows.flatten()[order], cols.flatten()[order]
    return ImplicitData.from_pairs(rows, cols, counts[:, rows, cols], u, i)


def _closed_form(y: np.ndarray, r: np.ndarray, reg: np.ndarray | None = None) -> np.ndarray:
    """(U, d) exact minimisers: (Y^T C_u Y + reg_u I) x_u = Y^T C_u p_u, dense numpy
    (``reg``: (U,) per row; default REG on every row)."""
    out = []
    regs = np.full(len(r), REG) if reg is None else reg
    for ru, reg_u in zip(r, regs, strict=True):
        c, p = 1 + ALPHA * ru, (ru > 0).astype(float)
        a = y.T @ (c[:, None] * y) + reg_u * np.eye(y.shape[1])
        out.append(np.linalg.solve(a, y.T @ (c * p)))
    return np.array(out)


def _implicit_cg(x: np.ndarray, y: np.ndarray, r: np.ndarray, steps: int) -> np.ndarray:
    """implicit 0.7's ``least_squares_cg`` (pure-Python version) on dense confidences."""
    x = x.copy()
    yty = y.T @ y + REG * np.eye(y.shape[1])
    for u, ru in enumerate(r):
        conf = np.where(ru > 0, 1 + ALPHA * ru, 0.0)
        obs = np.nonzero(ru > 0)[0]
        xu = x[u]
        res = -yty @ xu
        for i in obs:
            res += (conf[i] - (conf[i] - 1) * y[i] @ xu) * y[i]
        p, rs_old = res.copy(), res @ res
        if rs_old < 1e-20:
            continue
        for _ in range(steps):
            ap = yty @ p
            for i in obs:
                ap += (conf[i] - 1) * (y[i] @ p) * y[i]
            step = rs_old / (p @ ap)
            xu = xu + step * p
            res = res - step * ap
            rs_new = res @ res
            if rs_new < 1e-20:
                break
            p, rs_old = res + (rs_new / rs_old) * p, rs_new
        x[u] = xu
    return x


def _solve(x: Tensor, y: Tensor, data: ImplicitData, steps: int, exponent: float = 0.0) -> Tensor:
    """One half-step with REG on the rows (frequency-scaled by ``exponent``)."""
    return solve_rows(x, y, data, ALPHA, row_regularisation(data, ALPHA, REG, exponent), steps)


def _objective(
    x: Tensor, y: Tensor, data: ImplicitData, alpha: float = ALPHA, reg: float = REG
) -> Tensor:
    """The objective with the same ``reg`` on every row."""
    reg_x = row_regularisation(data, alpha, reg, 0.0)
    reg_y = row_regularisation(data.transpose(), alpha, reg, 0.0)
    return objective(x, y, data, alpha, reg_x, reg_y)


def test_duplicates_are_summed_and_pairs_sorted():
    data = ImplicitData.from_pairs(
        torch.tensor([2, 0, 2, 1]), torch.tensor([1, 3, 1, 0]), torch.tensor([1.0, 2, 3, 4]), 3, 4
    )
    assert data.rows.tolist() == [0, 1, 2] and data.cols.tolist() == [3, 0, 1]
    assert data.weights.tolist() == [[2.0, 4.0, 4.0]]
    back = data.transpose()
    assert back.rows.tolist() == [0, 1, 3] and back.cols.tolist() == [1, 2, 0]


@pytest.mark.parametrize("steps", [0, 3])  # 0: Cholesky; d = 3 CG steps are exact too
def test_half_step_solves_each_users_normal_equations(steps):
    counts = _counts(0)
    g = torch.Generator().manual_seed(2)
    x = 0.1 * torch.randn(2, 7, 3, generator=g, dtype=torch.float64)
    y = 0.1 * torch.randn(2, 9, 3, generator=g, dtype=torch.float64)
    got = _solve(x, y, _data(counts), steps)
    for m in range(2):
        want = _closed_form(y[m].numpy(), counts[m].numpy())
        np.testing.assert_allclose(got[m].numpy(), want, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("steps", [0, 3])
def test_frequency_scaled_regularisation_solves_each_rows_own_system(steps):
    counts = _counts(11)
    data = _data(counts)
    reg = row_regularisation(data, ALPHA, REG, 0.5)
    # by hand: the row's confidence mass m_u = n_items + alpha sum_i r_ui, over its mean
    mass = counts.shape[2] + ALPHA * counts.sum(-1).numpy()  # (M, U)
    want_reg = REG * np.sqrt(mass / mass.mean(axis=1, keepdims=True))
    np.testing.assert_allclose(reg.numpy(), want_reg, rtol=1e-12)
    assert torch.equal(
        row_regularisation(data, ALPHA, REG, 0.0), torch.full((2, 7), REG, dtype=torch.float64)
    )
    g = torch.Generator().manual_seed(12)
    x = 0.1 * torch.randn(2, 7, 3, generator=g, dtype=torch.float64)
    y = 0.1 * torch.randn(2, 9, 3, generator=g, dtype=torch.float64)
    got = _solve(x, y, data, steps, exponent=0.5)
    for m in range(2):
        want = _closed_form(y[m].numpy(), counts[m].numpy(), want_reg[m])
        np.testing.assert_allclose(got[m].numpy(), want, rtol=1e-7, atol=1e-9)


def test_one_cg_step_matches_implicits_solver_from_the_same_start():
    counts = _counts(3, members=1)
    g = torch.Generator().manual_seed(4)
    x = 0.1 * torch.randn(1, 7, 3, generator=g, dtype=torch.float64)
    y = 0.1 * torch.randn(1, 9, 3, generator=g, dtype=torch.float64)
    for steps in (1, 2):
        got = _solve(x, y, _data(counts), steps)[0].numpy()
        want = _implicit_cg(x[0].numpy(), y[0].numpy(), counts[0].numpy(), steps)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("steps", [0, 1, 3])
def test_objective_is_the_dense_sum_and_never_increases(steps):
    counts = _counts(5)
    data = _data(counts)
    g = torch.Generator().manual_seed(6)
    x = 0.1 * torch.randn(2, 7, 3, generator=g, dtype=torch.float64)
    y = 0.1 * torch.randn(2, 9, 3, generator=g, dtype=torch.float64)
    values = [_objective(x, y, data)]
    for _ in range(6):
        x = _solve(x, y, data, steps)
        values.append(_objective(x, y, data))
        y = _solve(y, x, data.transpose(), steps)
        values.append(_objective(x, y, data))
    v = torch.stack(values)  # (13, M)
    assert bool((v[1:] <= v[:-1] + 1e-10).all())
    assert bool((v[-1] < 0.8 * v[0]).all())
    for m in range(2):  # the objective by its definition, cell by cell
        s = x[m] @ y[m].T
        c, p = 1 + ALPHA * counts[m], (counts[m] > 0).double()
        dense = (c * (p - s) ** 2).sum() + REG * (x[m].square().sum() + y[m].square().sum())
        assert float(v[-1, m]) == pytest.approx(float(dense), rel=1e-10)


def _fit(data: ImplicitData, settings: ALSSettings, **kw: Any) -> tuple[dict, Any]:
    g = torch.Generator().manual_seed(7)
    params = {
        "u": 0.1 * torch.randn(data.weights.shape[0], data.n_rows, 3, generator=g),
        "i": 0.1 * torch.randn(data.weights.shape[0], data.n_cols, 3, generator=g),
    }
    params["i"][1] = params["i"][0]  # same init: members differ by their weights only
    params["u"][1] = params["u"][0]
    return params, fit_als(params, ("u", "i"), data, settings, **kw)


def test_bootstrap_members_differ_and_equal_weights_agree():
    counts = (_counts(8, members=1) > 0).float()
    rows, cols = torch.nonzero(counts[0], as_tuple=True)
    same = torch.ones(2, rows.numel())
    boot = bootstrap_weights(torch.ones(rows.numel()), 2, True, torch.Generator().manual_seed(0))
    assert not torch.equal(boot[0], boot[1])
    settings = ALSSettings(ALPHA, REG, epochs=3)
    p_same, _ = _fit(ImplicitData.from_pairs(rows, cols, same, 7, 9), settings)
    p_boot, _ = _fit(ImplicitData.from_pairs(rows, cols, boot, 7, 9), settings)
    assert torch.equal(p_same["u"][0], p_same["u"][1])
    assert (p_boot["u"][0] - p_boot["u"][1]).abs().max() > 1e-2


class MemoryCheckpoint:
    """An in-memory Checkpoint that can stop the run after a given number of saves."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.state: dict[str, Any] | None = None
        self.saves = 0
        self.stop_after = stop_after

    def load(self) -> dict[str, Any] | None:
        return self.state

    def save(self, state: dict[str, Any]) -> None:
        self.state = {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
        self.saves += 1
        if self.stop_after is not None and self.saves >= self.stop_after:
            raise KeyboardInterrupt


def _validator(valid: ImplicitData) -> Any:
    """params -> (M,) objective on held-out pairs: a deterministic metric that rises later."""
    return lambda p: _objective(p["u"], p["i"], valid, 30.0, 0.0)


def test_early_stopping_keeps_each_members_best_and_reports_each_iteration():
    data = _data((_counts(9) > 0).float())
    valid = _data((_counts(10) > 0).float())
    reports: list[EpochReport] = []
    settings = ALSSettings(ALPHA, REG, epochs=30, patience=2)
    params, hist = _fit(data, settings, validate=_validator(valid), on_epoch=reports.append)
    metric = np.array(hist.valid_metric)  # (iterations, M)
    assert len(reports) == len(hist.train_loss) == len(metric) < 30
    assert hist.best_epoch == metric.argmin(axis=0).tolist()
    assert [r.epoch for r in reports] == list(range(1, len(metric) + 1))
    assert reports[-1].metric == pytest.approx(metric[-1].mean())
    assert reports[-1].best_epoch == int(metric.mean(axis=1).argmin()) + 1
    kept = _validator(valid)(params)
    np.testing.assert_allclose(kept.numpy(), metric.min(axis=0), rtol=1e-5)


def test_a_resumed_fit_gives_the_same_factors_as_an_uninterrupted_one():
    data = _data((_counts(11) > 0).float())
    valid = _data((_counts(12) > 0).float())
    settings = ALSSettings(ALPHA, REG, epochs=6, patience=10)
    full, hist = _fit(data, settings, validate=_validator(valid))
    ckpt = MemoryCheckpoint(stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        _fit(data, settings, validate=_validator(valid), checkpoint=ckpt)
    assert ckpt.state is not None and ckpt.state["iteration"] == 3
    ckpt.stop_after = None
    resumed, hist2 = _fit(data, settings, validate=_validator(valid), checkpoint=ckpt)
    assert ckpt.saves == 6
    assert torch.equal(full["u"], resumed["u"]) and torch.equal(full["i"], resumed["i"])
    assert hist2.train_loss == hist.train_loss and hist2.valid_metric == hist.valid_metric
    assert hist2.best_epoch == hist.best_epoch


def test_stacked_model_scores_with_its_tables():
    fields = ([Field("user.u", "index", 4)], [Field("item.i", "index", 5)])
    stack = StackedModel(lambda: ImplicitALS(*fields, dim=2), members=2, seed=0)
    batch = {"user.u": torch.tensor([1, 3]), "item.i": torch.tensor([4, 0])}
    u = stack.params["model.vectors.user__u.weight"]
    v = stack.params["model.vectors.item__i.weight"]
    want = (u[:, [1, 3]] * v[:, [4, 0]]).sum(-1)
    torch.testing.assert_close(stack.call("forward", batch), want)
    torch.testing.assert_close(stack.call("user_factors", batch), u[:, [1, 3]])
    with pytest.raises(ValueError, match="drop the item features"):
        ImplicitALS(fields[0], [*fields[1], Field("item.genre", "index", 3)], dim=2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": -1.0}, r"\[model\] alpha = -1.0 is invalid: must be >= 0"),
        ({"cg_steps": -1}, r"\[model\] cg_steps = -1 is invalid: must be an integer >= 0"),
        ({"reg": -0.1}, r"\[model\] reg = -0.1 is invalid: must be >= 0"),
        ({"dropout": 0.1}, r"\[model\] dropout = 0.1 is not used by type = 'als'"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(type="als", **kwargs)
    if "alpha" in kwargs:
        with pytest.raises(ConfigError, match=r"alpha = -1.0 is not used by type = 'two_tower'"):
            ModelConfig(type="two_tower", **kwargs)


SCHEMA = Schema(label="rating", label_kind="rating", rating_range=(1.0, 5.0))


@pytest.mark.parametrize(
    ("schema", "section", "message"),
    [
        (
            Schema(label="rating", item_features=(Categorical("genre"),)),
            None,
            r"schema has item_features \(genre\): remove \[schema\] item_features \(or set "
            r"\[data\] item_features = false\)",
        ),
        (
            Schema(label="rating", context=(Categorical("device"),)),
            None,
            r"schema has context \(device\): remove \[schema\] context, or use",
        ),
        (SCHEMA, EnsembleConfig(members=3), r"set \[uncertainty\] cold_start = 'population'"),
        (
            SCHEMA,
            TrainConfig(learning_rate=0.1),
            r"\[training\] learning_rate = 0.1 is not used by \[model\] type = 'als' .*: "
            "remove learning_rate",
        ),
    ],
)
def test_spec_refuses_features_a_learned_cold_start_and_gradient_settings(schema, section, message):
    more = {"training" if isinstance(section, TrainConfig) else "ensemble": section}
    config = RunConfig(schema=schema, model=ModelConfig(type="als"), **more)
    with pytest.raises(ValueError, match=message):
        ModelSpec.from_config(config).validate()


def _interactions(seed: int, users: int = 60, items: int = 40) -> pd.DataFrame:
    """Users in 2 taste blocks; a user likes in-block items 4x more often; ratings 1..5."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        w = np.where((np.arange(items) // (items // 2)) == (u % 2), 4.0, 1.0)
        for i in rng.choice(items, size=12, replace=False, p=w / w.sum()):
            rows.append((u, int(i), float(rng.choice([3.0, 4.0, 5.0]))))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating"])


@pytest.fixture(scope="module")
def fitted() -> tuple[Recommender, pd.DataFrame]:
    df = _interactions(0).sample(frac=1.0, random_state=0)
    n = len(df)
    train, valid, test = (
        df.iloc[: n * 6 // 10],
        df.iloc[n * 6 // 10 : n * 8 // 10],
        df.iloc[n * 8 // 10 :],
    )
    config = RunConfig(
        schema=SCHEMA,
        model=ModelConfig(type="als", dim=4, reg=0.1, alpha=2.0, positive_threshold=4.0),
        training=TrainConfig(epochs=8, patience=3),
        evaluation=EvaluationConfig(k=10, relevance_threshold=4.0),
        ensemble=EnsembleConfig(members=3, bootstrap=True),
        uncertainty=UncertaintyConfig(cold_start="population"),
        seed=0,
    )
    return Recommender(config).fit(train, valid), test


def test_recommend_and_evaluate_carry_confidence(fitted):
    rec, test = fitted
    lists = rec.recommend([0, 1, "new"], k=5)
    assert len(lists) == 15 and bool((lists["std"] > 0).all())
    assert lists["confidence"].between(0, 1).all()
    report = rec.evaluate(test)
    assert 0 < report["ndcg@10"] <= 1 and report["relevance_temperature"] > 0
    assert 0 <= report["expected_hits@10"] <= 10
    # the ensemble mean ranks by the mean of the members' dot products
    u = rec.scorer_.member_scores([0]).mean(dim=0)
    torch.testing.assert_close(rec.scorer_.mean_scores([0]), u)


def test_unknown_users_and_items_are_less_certain(fitted):
    rec, test = fitted
    ratios = rec.oov_std_ratios(test)
    assert ratios["user.user_id"] > 1.2 and ratios["item.item_id"] > 1.2


def test_save_load_round_trip_gives_identical_scores(fitted, tmp_path):
    rec, test = fitted
    rec.save(tmp_path / "run")
    back = Recommender.load(tmp_path / "run")
    users, items = test["user_id"].tolist(), test["item_id"].tolist()
    a, b = rec.predict(users, items), back.predict(users, items)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std)


@pytest.mark.filterwarnings("ignore:OpenBLAS is configured")
def test_same_factors_as_implicits_als_from_the_same_start():
    implicit = pytest.importorskip("implicit")
    import scipy.sparse as sp

    df = _interactions(1, users=200, items=60)
    rng = np.random.default_rng(0)
    test_mask = rng.random(len(df)) < 0.2
    train, test = df[~test_mask], df[test_mask]
    matrix = sp.csr_matrix(
        (np.ones(len(train), np.float32), (train["user_id"], train["item_id"])), shape=(200, 60)
    )
    start_u = rng.random((200, 8), dtype=np.float32) * 0.01  # implicit's own initialisation
    start_i = rng.random((60, 8), dtype=np.float32) * 0.01
    model = implicit.cpu.als.AlternatingLeastSquares(
        factors=8, regularization=REG, alpha=1.0 + ALPHA, iterations=10, num_threads=1
    )  # on 0/1 data implicit's confidence alpha * 1 is wager's 1 + alpha * 1
    model.user_factors, model.item_factors = start_u.copy(), start_i.copy()
    model.fit(matrix, show_progress=False)
    rows, cols = (torch.as_tensor(a) for a in matrix.nonzero())
    data = ImplicitData.from_pairs(rows, cols, torch.ones(1, rows.numel()), 200, 60)
    # one half-step: implicit's native CG solver and ours agree to float32 rounding
    theirs_x = start_u.copy()
    model.solver((matrix * (1.0 + ALPHA)).tocsr(), theirs_x, start_i.copy(), REG, num_threads=1)
    x0, y0 = torch.tensor(start_u)[None], torch.tensor(start_i)[None]
    ours_x = _solve(x0, y0, data, 3)[0].numpy()
    np.testing.assert_allclose(ours_x, theirs_x, atol=1e-5)
    # 10 iterations: rounding grows along the (non-convex) path, the objective agrees
    params = {"u": x0.clone(), "i": y0.clone()}
    fit_als(params, ("u", "i"), data, ALSSettings(ALPHA, REG, epochs=10))
    theirs = _objective(
        torch.as_tensor(model.user_factors)[None], torch.as_tensor(model.item_factors)[None], data
    )
    ours = _objective(params["u"], params["i"], data)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-4)

    def ndcg(x: np.ndarray, y: np.ndarray) -> float:
        users = sorted(set(test["user_id"]))
        top = ranking.top_k_from_scores(torch.as_tensor(x[users] @ y.T), 10, matrix[users])
        relevant = [test.loc[test["user_id"] == u, "item_id"].to_numpy() for u in users]
        return ranking.ranking_metrics(top, relevant, 10)["ndcg@10"]

    # from wager's own start (N(0, 0.05^2)): another local optimum of the same objective;
    # over 4 seeds of both libraries here NDCG@10 ranged 0.159-0.185, hence 0.03
    torch.manual_seed(0)
    params = {"u": 0.05 * torch.randn(1, 200, 8), "i": 0.05 * torch.randn(1, 60, 8)}
    fit_als(params, ("u", "i"), data, ALSSettings(ALPHA, REG, epochs=10))
    assert ndcg(params["u"][0].numpy(), params["i"][0].numpy()) == pytest.approx(
        ndcg(model.user_factors, model.item_factors), abs=0.03
    )
