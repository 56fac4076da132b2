"""The simulator: reproducibility, convergence of the observed CTR to the truth, zero regret for
the oracle, targets throughput and catalogue turnover counted by hand, the LoggedFeedback it
writes, and named errors for bad configs, models and policies."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TINY_SIMULATION_MODEL as TINY_MODEL
from wager.data.synthetic import PopularityPolicy, SyntheticWorld, WorldConfig
from wager.evaluation.simulation import (
    SimulationConfig,
    SimulationModel,
    WorldModel,
    catalogue,
    simulate,
    world_prediction,
)
from wager.policies import Policy, PolicyState, Slate
from wager.prediction import Prediction

# ----------------------------------------------------------------------------- test doubles


@dataclass(frozen=True)
class TopKByMean:
    """Greedy: the k highest means in decreasing order (propensity 1)."""

    def select(self, prediction: Prediction, k: int, state: PolicyState) -> Slate:
        items = torch.topk(prediction.mean, k, dim=1).indices
        return Slate(items, torch.ones(items.shape, dtype=torch.float64), policy="topk")

    def action_distribution(
        self, prediction: Prediction, k: int, state: PolicyState, draws: int = 1000
    ) -> torch.Tensor:
        items = torch.topk(prediction.mean, k, dim=1).indices
        return torch.nn.functional.one_hot(items, prediction.mean.shape[1]).double()


@dataclass(frozen=True)
class UniformSlate:
    """k distinct items uniformly at random; position j has propensity 1 / (C - j)."""

    def select(self, prediction: Prediction, k: int, state: PolicyState) -> Slate:
        b, c = prediction.mean.shape
        items = torch.rand(b, c, generator=state.generator).argsort(dim=1)[:, :k]
        prop = (1.0 / (c - torch.arange(k, dtype=torch.float64))).expand(b, k)
        return Slate(items, prop.clone(), policy="uniform")

    def action_distribution(
        self, prediction: Prediction, k: int, state: PolicyState, draws: int = 1000
    ) -> torch.Tensor:
        b, c = prediction.mean.shape
        return torch.full((b, k, c), 1.0 / c, dtype=torch.float64)


class BetaModel:
    """Per-item Beta(1, 20) posterior of the CTR from the logs (ignores users and positions)."""

    def __init__(self) -> None:
        self.clicks: dict[int, float] = {}
        self.shows: dict[int, float] = {}
        self.fits = 0

    def fit(self, logs: pd.DataFrame, items: pd.DataFrame) -> None:
        self.fits += 1
        g = logs.groupby("item_id")["click"].agg(["sum", "count"])
        self.clicks = g["sum"].astype(float).to_dict()
        self.shows = g["count"].astype(float).to_dict()

    def predict(self, user_ids: np.ndarray, item_ids: np.ndarray) -> Prediction:
        a = np.array([1.0 + self.clicks.get(int(i), 0.0) for i in item_ids])
        b = np.array([20.0 + self.shows.get(int(i), 0.0) for i in item_ids]) - a + 1.0
        mean = a / (a + b)
        std = np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
        shape = (len(user_ids), len(item_ids))
        return Prediction(
            mean=torch.from_numpy(np.broadcast_to(mean, shape).copy()),
            std=torch.from_numpy(np.broadcast_to(std, shape).copy()),
        )

    def add_items(self, items: pd.DataFrame) -> None:
        pass

    def retire_items(self, item_ids: np.ndarray) -> None:
        pass


def small_world(**kw: object) -> SyntheticWorld:
    base: dict[str, object] = {
        "n_users": 100,
        "n_items": 20,
        "n_days": 4,
        "new_items_per_day": 3,
        "seed": 1,
    }
    base.update(kw)
    return SyntheticWorld(WorldConfig(**base))  # type: ignore[arg-type]


def test_test_doubles_follow_the_protocols() -> None:
    assert isinstance(TopKByMean(), Policy) and isinstance(UniformSlate(), Policy)
    assert isinstance(BetaModel(), SimulationModel)
    assert isinstance(WorldModel(small_world()), SimulationModel)


# ----------------------------------------------------------------------------- reproducibility


def _run(seed: int) -> tuple:
    world = small_world()
    cfg = SimulationConfig(
        days=4, requests_per_day=150, warmup_rows=400, batch_requests=64, seed=seed
    )
    model = BetaModel()
    res = simulate(world, UniformSlate(), model, cfg)
    return res, model


def test_seeded_simulation_is_reproducible_bit_for_bit() -> None:
    a, model = _run(3)
    b, _ = _run(3)
    pd.testing.assert_frame_equal(a.days, b.days, check_exact=True)
    pd.testing.assert_frame_equal(a.log, b.log, check_exact=True)
    assert a.total == b.total
    for f in ("action", "position", "reward", "propensity", "user_ids", "request"):
        assert np.array_equal(getattr(a.feedback, f), getattr(b.feedback, f)), f
    assert a.to_dict() == b.to_dict()
    # warm-up fit + one refit each evening except the last: 1 + (4 - 1)
    assert model.fits == 4
    c, _ = _run(4)
    assert not a.log["user_id"].equals(c.log["user_id"])


# ----------------------------------------------------------------------------- convergence


def test_observed_ctr_of_a_fixed_policy_converges_to_its_true_value() -> None:
    world = small_world(n_days=2, new_items_per_day=5)
    k = 3
    cfg = SimulationConfig(
        days=2, requests_per_day=20000, k=k, warmup_rows=0, catalogue_size=1000, seed=0
    )
    res = simulate(world, UniformSlate(), WorldModel(world, "popularity"), cfg)
    # truth: users uniform, items uniform over the day's catalogue at each of positions 1..k,
    # click prob = bias[pos] * ctr(u, i); equal impressions per day -> average the two days
    bias = 1.0 / np.log2(1.0 + np.arange(1, k + 1))
    per_day = [
        world.true_ctr_matrix(None, world.available_items(d)).mean() * bias.mean() for d in range(2)
    ]
    expected = float(np.mean(per_day))
    n = res.total["impressions"]
    assert n == 2 * 20000 * k
    se = np.sqrt(expected * (1 - expected) / n)
    assert abs(res.total["ctr"] - expected) < 3 * se
    # the noise-free CTR of the shown items has only the user / item draw's noise
    assert abs(res.total["expected_ctr"] - expected) < 3 * se
    # propensities of the uniform slate: 1 / (C - j) at 0-based position j, C = 20 then 25
    c = res.log["day"].map({0: 20, 1: 25}).to_numpy()
    assert np.allclose(res.log["propensity"], 1.0 / (c - (res.log["position"] - 1)))


# ----------------------------------------------------------------------------- regret


def test_oracle_policy_has_zero_regret_and_uniform_regret_matches_a_hand_sum() -> None:
    world = small_world()
    cfg = SimulationConfig(days=3, requests_per_day=300, warmup_rows=0, seed=2)
    oracle = simulate(world, TopKByMean(), WorldModel(world, "true_ctr"), cfg)
    assert oracle.total["regret"] == 0.0
    assert (oracle.days["regret"] == 0.0).all()
    assert oracle.total["expected_ctr"] == pytest.approx(oracle.total["oracle_ctr"], rel=1e-12)

    res = simulate(world, UniformSlate(), WorldModel(world, "true_ctr"), cfg)
    bias = 1.0 / np.log2(1.0 + np.arange(1, 4))
    regret = 0.0
    for (day, _), rows in res.log.groupby(["day", "request"]):
        user = int(rows["user_id"].iloc[0])
        items = catalogue(world, int(day), None)
        best = np.sort(world.true_ctr(np.full(len(items), user), items))[::-1][:3]
        shown = world.true_ctr(rows["user_id"], rows["item_id"], rows["position"])
        regret += float(best @ bias - shown.sum())
    assert res.total["regret"] == pytest.approx(regret, rel=1e-9)
    assert res.days["cumulative_regret"].iloc[-1] == pytest.approx(regret, rel=1e-9)
    assert res.total["regret"] > 0


# ----------------------------------------------------------------------------- catalogue, targets


def test_throughput_turnover_and_coverage_counted_by_hand() -> None:
    # 3 items on day 0, 1 new item per day, catalogue of 3: the oldest retires each morning.
    # Slates of k = 3 show every available item once per request: 5 impressions per day each.
    #   day 0: {0, 1, 2}   day 1: {1, 2, 3}   day 2: {2, 3, 4}   day 3: {3, 4, 5}
    # new items 3, 4, 5 (day_added >= 1) reach 8 impressions on their 2nd day: item 3 on
    # day 2, item 4 on day 3, item 5 never -> throughput [0, 0, 1, 1].
    world = SyntheticWorld(
        WorldConfig(n_users=10, n_items=3, n_days=4, new_items_per_day=1, n_positions=3, seed=0)
    )
    cfg = SimulationConfig(
        days=4,
        requests_per_day=5,
        k=3,
        warmup_rows=0,
        catalogue_size=3,
        target_impressions=8,
        seed=0,
    )
    assert [catalogue(world, d, 3).tolist() for d in range(4)] == [
        [0, 1, 2],
        [1, 2, 3],
        [2, 3, 4],
        [3, 4, 5],
    ]
    res = simulate(world, UniformSlate(), WorldModel(world), cfg)
    assert res.days["catalogue"].tolist() == [3, 3, 3, 3]
    assert res.days["new_items"].tolist() == [0, 1, 1, 1]
    assert res.days["retired_items"].tolist() == [0, 1, 1, 1]
    assert res.days["throughput"].tolist() == [0, 0, 1, 1]
    assert res.total["throughput"] == 2
    assert res.days["coverage"].tolist() == [1.0] * 4
    assert res.total["coverage"] == 1.0
    assert res.log.groupby(["day", "item_id"]).size().eq(5).all()

    # with a click target too: an item counts on the first day it has >= 8 impressions and
    # >= 1 click in total, worked out from the log
    res = simulate(
        world, UniformSlate(), WorldModel(world), dataclasses.replace(cfg, target_clicks=1)
    )
    per = (
        res.log.groupby(["item_id", "day"])["click"].agg(["size", "sum"]).groupby(level=0).cumsum()
    )
    ok = per[(per["size"] >= 8) & (per["sum"] >= 1)].reset_index()
    first = ok[ok["item_id"] >= 3].groupby("item_id")["day"].min()
    expected = [int((first == d).sum()) for d in range(4)]
    assert res.days["throughput"].tolist() == expected


def test_rpm_uses_the_cost_per_click_of_each_clicked_item() -> None:
    world = small_world()
    cfg = SimulationConfig(days=2, requests_per_day=200, warmup_rows=0, seed=0)
    cpc = np.linspace(0.5, 2.0, world.config.n_items_total)
    res = simulate(world, UniformSlate(), WorldModel(world), cfg, cpc=cpc)
    clicked = res.log[res.log["click"] == 1]["item_id"].to_numpy()
    assert res.total["rpm"] == pytest.approx(1000 * cpc[clicked].sum() / len(res.log), rel=1e-12)
    flat = simulate(
        world, UniformSlate(), WorldModel(world), dataclasses.replace(cfg, cpc_sigma=0.0)
    )
    assert flat.total["rpm"] == pytest.approx(1000 * flat.total["ctr"], rel=1e-12)


# ----------------------------------------------------------------------------- logged feedback


def test_logged_feedback_matches_the_log_and_the_uniform_distribution() -> None:
    world = small_world(n_days=2)
    cfg = SimulationConfig(
        days=2, requests_per_day=7, k=2, warmup_rows=0, catalogue_size=21,
        log_action_distribution=True, seed=0,
    )  # fmt: skip
    res = simulate(world, UniformSlate(), WorldModel(world), cfg)
    fb = res.feedback
    # actions: every item available on some day: 0..19 on day 0, 20..22 arrive on day 1
    assert fb.item_ids.tolist() == list(range(23))
    assert np.array_equal(fb.item_ids[fb.action], res.log["item_id"])
    assert np.array_equal(fb.position, res.log["position"] - 1)
    assert fb.n_positions == 2 and fb.n_rounds == 2 * 7 * 2
    assert np.array_equal(fb.reward, res.log["click"].astype(float))
    d = fb.action_distribution
    assert d is not None and d.shape == (28, 23, 2)
    # day 0: items 0..19 each 1/20; day 1: catalogue of 21 = items 2..22 each 1/21
    assert np.allclose(d[:14, :20, :], 1 / 20) and np.all(d[:14, 20:, :] == 0)
    assert np.all(d[14:, :2, :] == 0) and np.allclose(d[14:, 2:, :], 1 / 21)


def test_world_scores_make_the_popularity_logging_policy_a_softmax() -> None:
    world = small_world()
    items = world.available_items(0)
    pred = world_prediction(world, np.arange(4), items, "log_popularity")
    softmax = torch.softmax(pred.mean / 1.0, dim=1).numpy()  # a softmax policy at T = 1
    expected = PopularityPolicy().probabilities(world, np.arange(4), items, 0)
    assert np.allclose(softmax, expected, rtol=1e-12)
    truth = world_prediction(world, np.array([5]), items, "true_ctr").mean.numpy()
    assert np.allclose(truth[0], world.true_ctr(np.full(len(items), 5), items), rtol=1e-12)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"days": 0}, r"SimulationConfig\.days must be an integer in \[1, 100000\], got 0"),
        ({"requests_per_day": 1.5}, r"SimulationConfig\.requests_per_day must be an integer"),
        ({"k": 0}, r"SimulationConfig\.k must be an integer in \[1, 100\], got 0"),
        ({"warmup_rows": -1}, r"SimulationConfig\.warmup_rows must be an integer in \[0,"),
        ({"catalogue_size": 0}, r"SimulationConfig\.catalogue_size must be an integer in \[1,"),
        ({"target_impressions": 0}, r"SimulationConfig\.target_impressions must be an integer"),
        ({"target_clicks": True}, r"SimulationConfig\.target_clicks must be an integer"),
        ({"cpc_sigma": -0.1}, r"SimulationConfig\.cpc_sigma must be a number in \[0, 5\]"),
        ({"cpc_sigma": float("nan")}, r"SimulationConfig\.cpc_sigma must be a number"),
        ({"seed": -1}, r"SimulationConfig\.seed must be an integer in \[0,"),
        ({"log_action_distribution": 1}, r"log_action_distribution must be true or false"),
    ],
)
def test_bad_config_is_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimulationConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"days": 5}, r"days = 5 exceeds the world's n_days = 4: build the world with"),
        ({"days": 2, "k": 4}, r"k = 4 exceeds the world's n_positions = 3"),
        (
            {"days": 2, "k": 2, "catalogue_size": 1},
            r"k = 2 exceeds the smallest daily catalogue \(1 items\)",
        ),
    ],
)
def test_config_that_does_not_fit_the_world_is_named(kwargs: dict, message: str) -> None:
    world = small_world()
    with pytest.raises(ValueError, match=message):
        simulate(
            world, UniformSlate(), WorldModel(world), SimulationConfig(warmup_rows=0, **kwargs)
        )


class WrongShapeModel(BetaModel):
    def predict(self, user_ids: np.ndarray, item_ids: np.ndarray) -> Prediction:
        return Prediction(mean=torch.zeros(len(item_ids)))


@dataclass(frozen=True)
class RepeatingPolicy(UniformSlate):
    def select(self, prediction: Prediction, k: int, state: PolicyState) -> Slate:
        b = prediction.mean.shape[0]
        return Slate(torch.zeros(b, k, dtype=torch.int64), torch.ones(b, k, dtype=torch.float64))


def test_bad_model_and_policy_outputs_are_named() -> None:
    world = small_world()
    cfg = SimulationConfig(days=1, requests_per_day=3, warmup_rows=0)
    with pytest.raises(
        ValueError,
        match=r"WrongShapeModel\.predict returned a prediction of shape \(20,\), "
        r"expected \(3, 20\)",
    ):
        simulate(world, UniformSlate(), WrongShapeModel(), cfg)
    with pytest.raises(
        ValueError,
        match=r"RepeatingPolicy\.select: request 0 of the batch got columns \[0, 0, 0\]; "
        r"a slate holds 3 distinct",
    ):
        simulate(world, RepeatingPolicy(), WorldModel(world), cfg)
    with pytest.raises(
        TypeError,
        match=r"the model object does not implement wager\.evaluation\.simulation\.SimulationModel",
    ):
        simulate(world, UniformSlate(), object(), cfg)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"cpc must be \(29,\) finite costs per click >= 0"):
        simulate(world, UniformSlate(), WorldModel(world), cfg, cpc=np.ones(3))


# ----------------------------------------------------------------------------- CLI


def _argv(line: str, *extra: object) -> list[str]:
    return [*line.split(), *map(str, extra)]


def test_cli_simulate_json_on_a_tiny_world(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from wager.cli import app

    config = tmp_path / "model.toml"
    config.write_text(TINY_MODEL)
    out = tmp_path / "sim"
    args = _argv(
        "simulate --policy greedy --days 3 --requests 40 --users 30 --items 12 --new-items 2 "
        "--warmup 300 --seed 0 --target-impressions 5 --json",
        *("--config", config, "--out", out),
    )
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [d["day"] for d in payload["days"]] == [0, 1, 2]
    assert set(payload["total"]) >= {"ctr", "rpm", "regret", "throughput", "coverage"}
    days = pd.DataFrame(payload["days"])
    # totals from the per-day figures: impressions 3 x 40 x 3 = 360
    assert payload["total"]["impressions"] == 360 and days["impressions"].tolist() == [120] * 3
    assert payload["total"]["ctr"] == pytest.approx(days["clicks"].sum() / 360, rel=1e-12)
    assert payload["total"]["regret"] == pytest.approx(days["regret"].sum(), rel=1e-9)
    assert payload["total"]["throughput"] == days["throughput"].sum()
    assert days["catalogue"].tolist() == [12, 12, 12]  # 2 arrive, the 2 oldest retire
    assert (out / "regret.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "simulation.json").read_text())["total"] == payload["total"]
    # the same folder again: refused before any work, the earlier files kept
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2
    assert "already holds simulation.json, regret.png: pass --overwrite" in refused.output
    # the same seed again: the same figures
    again = json.loads(CliRunner().invoke(app, [*args, "--overwrite"]).stdout)
    assert again["days"] == payload["days"]

    sweep_args = _argv(
        "simulate --sweep greedy;softmax:temperature=1;ucb:beta=1:batch_aware=1 --seeds 2 --days 2 "
        "--requests 20 --users 30 --items 12 --warmup 200 --taste-strength 0 --hidden-strength 2 "
        "--json",
        *("--config", config, "--out", out, "--overwrite"),
    )
    sweep = CliRunner().invoke(app, sweep_args)
    assert sweep.exit_code == 0, sweep.output
    runs = json.loads(sweep.stdout)["runs"]
    assert [r["policy"] for r in runs] == [
        "greedy",
        "softmax temperature=1",
        "ucb beta=1 batch_aware=1",
    ]
    ctr = [t["ctr"] for t in runs[1]["per_seed"]]
    assert runs[1]["mean"]["ctr"] == pytest.approx(np.mean(ctr), rel=1e-12)
    assert runs[1]["std"]["ctr"] == pytest.approx(np.std(ctr, ddof=1), rel=1e-12)
    assert (out / "tradeoff.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sweep", "ucb:beta"], "--sweep: 'beta' in 'ucb:beta' is not PARAM=V1,V2,..."),
        (["--sweep", "ucb:beta=x"], "--sweep: beta='x' in 'ucb:beta=x' holds a non-number"),
        (["--seeds", "0"], "--seeds must be >= 1, got 0"),
        (["--days", "0"], "--days must be >= 1, got 0"),
        (
            ["--requests", "0"],
            "--requests: SimulationConfig.requests_per_day must be an integer in [1,",
        ),
        (["-k", "0"], "-k: SimulationConfig.k must be an integer in [1, 100], got 0"),
        (["--policy", "ucb", "--beta", "-1"], "--policy: beta must be a finite number >= 0"),
        (["--policy", "bogus"], "--policy: unknown policy 'bogus'; choose one of greedy"),
        (["--sweep", "greedy;ucb:beta=-1"], "--sweep: beta must be a finite number >= 0"),
        (["--sweep", "ucb:beta=1:batch_aware=2"], "--sweep: batch_aware must be 0 or 1, got 2"),
        (["--batch-aware"], "--policy: policy 'greedy' takes no parameters; batch_aware does"),
        (["--taste-strength", "-1"], "--taste-strength: WorldConfig.taste_strength must be"),
        (["--users", "0"], "--users: WorldConfig.n_users must be an integer in [1,"),
    ],
)
def test_cli_simulate_bad_flags_are_named(args: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from wager.cli import app

    result = CliRunner().invoke(app, ["simulate", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_cli_simulate_item_effects(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    import wager
    from wager.cli import app

    args = _argv(
        "simulate --item-effects --policy ucb --beta 1 --days 2 --requests 40 --users 30 "
        "--items 12 --new-items 2 --warmup 400 --seed 0 --hidden-strength 3 --json"
    )
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["total"]["impressions"] == 2 * 40 * 3
    # a model that learns item ids is refused before any simulation, naming the setting
    ids = Path(wager.__file__).parent / "examples" / "simulate.toml"
    refused = CliRunner().invoke(app, [*args, "--config", str(ids)])
    assert refused.exit_code == 2
    assert "--item-effects: item effects need a model without item ids" in refused.output
    assert "item_min_count = 1000000000" in refused.output
