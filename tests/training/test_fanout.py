"""Ensemble members trained in loops of their own (``[ensemble] fit = "separate"``), one
after another here or as tasks on a local Ray cluster (``wager train --ray``).

The reference of a Ray run is the sequential run with the same config and seed: each member
starts from its stacked initial weights, seeds everything it draws (shuffles, bootstrap
weights, negatives, dropout) with ``seed + m`` and trains with ``member_threads`` torch
threads, so its weights must agree bit for bit wherever it trains (``torch.equal``), and
so must every metric of the run.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import wager.cli
import wager.training.fanout as fanout
from conftest import bias_ratings, rating_toml
from wager.config import (
    ConfigError,
    EnsembleConfig,
    EvaluationConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    UncertaintyConfig,
)
from wager.data.schema import Schema
from wager.errors import MissingExtraError, TrainingDivergedError
from wager.recommender import Recommender
from wager.training.checkpoint import EpochReport, MemoryCheckpoint
from wager.training.fanout import RayRunner, SequentialRunner
from wager.training.history import History
from wager.training.trainer import StackedModel

ray = pytest.importorskip("ray")

RATINGS = Schema(
    user="user_id", item="item_id", label="rating", label_kind="rating", rating_range=(1, 5)
)


@pytest.fixture(scope="module")
def cluster() -> object:
    """One local Ray cluster (2 CPUs) for the module; RayRunner joins it and leaves it up."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _rating_config(members: int = 3, **ensemble: object) -> RunConfig:
    """Biased MF with dropout and OOV drops, a bootstrap ensemble trained separately:
    every random draw a member makes is exercised."""
    return RunConfig(
        schema=RATINGS,
        model=ModelConfig(type="biased_mf", dim=4, dropout=0.2, oov_rate=0.1),
        training=TrainConfig(epochs=6, batch_size=64, learning_rate=0.05, patience=2),
        ensemble=EnsembleConfig(members=members, fit="separate", **ensemble),  # type: ignore[arg-type]
        seed=3,
    )


def _implicit_config() -> RunConfig:
    """A two-tower retrieval ensemble with uniform extra negatives, stopped on validation
    NDCG@5, with the population cold start (drawn after training)."""
    schema = Schema(user="user_id", item="item_id", label="rating", label_kind="rating")
    return RunConfig(
        schema=schema,
        model=ModelConfig(type="two_tower", dim=4, hidden=[8], positive_threshold=4.0, negatives=8),
        training=TrainConfig(epochs=4, batch_size=32, learning_rate=0.02, patience=3),
        evaluation=EvaluationConfig(k=5),
        ensemble=EnsembleConfig(members=2, fit="separate"),
        uncertainty=UncertaintyConfig(cold_start="population", population_draws=3),
        seed=0,
    )


def _split(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    df = df.sample(frac=1.0, random_state=0)
    return df.iloc[: len(df) * 8 // 10], df.iloc[len(df) * 8 // 10 :]


def _same_members(a: Recommender, b: Recommender) -> None:
    """Bit-for-bit equal members; equal histories but their wall times (NaN: a member
    that had stopped, equal to NaN)."""
    sa, sb = a.scorer_.stack, b.scorer_.stack
    assert sa.params.keys() == sb.params.keys()
    for k in sa.params:
        assert torch.equal(sa.params[k], sb.params[k]), k
    ha, hb = a.history_, b.history_
    va, vb = np.array(ha.valid_metric, dtype=float), np.array(hb.valid_metric, dtype=float)
    assert np.array_equal(va, vb, equal_nan=True)
    assert ha.train_loss == hb.train_loss and ha.best_epoch == hb.best_epoch


def test_sequential_runner_yields_each_result_in_order() -> None:
    results = list(SequentialRunner().run(lambda shared, x: shared + x, [5, 7], shared=1))
    assert results == [(0, 6), (1, 8)]


def test_a_member_starts_from_its_stacked_initial_weights() -> None:
    from wager.models.fields import Field
    from wager.models.mf import FeatureFactorization

    def make() -> torch.nn.Module:
        return FeatureFactorization(
            [Field("user.u", "index", 5)], [Field("item.i", "index", 4)], [], dim=3
        )

    stack = StackedModel(make, members=3, seed=7)
    alone = StackedModel(make, members=1, seed=7 + 2)
    picked = stack.select(2)
    assert picked.members == 1
    for k in stack.params:
        assert torch.equal(picked.params[k], alone.params[k]), k
        picked.params[k].add_(1.0)  # a copy: the stack keeps its own
        assert not torch.equal(picked.params[k], stack.params[k][2:3])
    with pytest.raises(IndexError):
        stack.select(3)


def test_merged_history_by_hand() -> None:
    one = History([1.0, 0.5, 0.25], [[3.0], [2.0], [2.5]], [1], 3.0, [1.0, 1.0, 1.0])
    two = History([2.0, 1.0], [[4.0], [3.0]], [1], 2.0, [2.0, 2.0])
    merged = History.merge([one, two], seconds=5.5)
    assert merged.train_loss == [1.5, 0.75, 0.25]
    assert merged.epoch_seconds == [3.0, 3.0, 1.0]
    assert merged.valid_metric[:2] == [[3.0, 4.0], [2.0, 3.0]]
    assert merged.valid_metric[2][0] == 2.5 and math.isnan(merged.valid_metric[2][1])
    assert merged.best_epoch == [1, 1]
    assert (merged.seconds, merged.member_seconds) == (5.5, [3.0, 2.0])


def test_ray_members_are_identical_to_sequential_ones(cluster: object) -> None:
    train, valid = _split(bias_ratings())
    here = Recommender(_rating_config()).fit(train, valid)
    there = Recommender(_rating_config()).fit(train, valid, runner=RayRunner("auto"))
    _same_members(here, there)
    assert ray.is_initialized()  # joined the running cluster, did not stop it
    assert len(here.metrics_["member_seconds"]) == 3
    # the members differ from each other (own seeds, bootstrap draws, early stopping)
    for table in here.scorer_.stack.params.values():
        assert not torch.equal(table[0], table[1])
    users, items = ["u0", "u5", "nobody"], ["i0", "i29", "i3"]
    pa, pb = here.predict(users, items), there.predict(users, items)
    assert torch.equal(pa.mean, pb.mean) and torch.equal(pa.std, pb.std)  # type: ignore[arg-type]


def test_ray_retrieval_members_with_population_cold_start_are_identical(cluster: object) -> None:
    df = bias_ratings(seed=2)
    df["rating"] = df["rating"].clip(lower=2)
    train, valid = _split(df)
    here = Recommender(_implicit_config()).fit(train, valid)
    there = Recommender(_implicit_config()).fit(train, valid, runner=RayRunner("auto"))
    _same_members(here, there)
    assert here.scorer_.population_picks is not None
    for k, v in here.scorer_.population_picks.items():
        assert torch.equal(v, there.scorer_.population_picks[k])  # type: ignore[index]
    top_a = here.recommend(["u1", "u2", "new"], k=5)
    top_b = there.recommend(["u1", "u2", "new"], k=5)
    pd.testing.assert_frame_equal(top_a, top_b)


def test_a_stopped_separate_run_resumes_to_the_uninterrupted_one_on_either_runner(
    cluster: object,
) -> None:
    """Stopped in member 2's second epoch: resumed here it continues that member's loop;
    stopped in member 2's first epoch, it resumes on Ray, which keeps the finished member
    and trains the others (member 2 from its start: a Ray task keeps no loop state)."""
    train, valid = _split(bias_ratings())
    whole = Recommender(_rating_config()).fit(train, valid)

    def stop_at(member: int, epoch: int):  # type: ignore[no-untyped-def]
        def hook(report: EpochReport) -> None:
            if (report.member, report.epoch) == (member, epoch):
                raise KeyboardInterrupt

        return hook

    for epoch, runner in ((2, None), (1, RayRunner("auto"))):
        checkpoint = MemoryCheckpoint()
        with pytest.raises(KeyboardInterrupt):
            Recommender(_rating_config()).fit(
                train, valid, on_epoch=stop_at(2, epoch), checkpoint=checkpoint
            )
        state = checkpoint.load()
        assert state is not None and list(state["done"]) == [0]
        assert (state["member"], state["loop"]["epoch"]) == (1, epoch)
        assert state["progress"] == f"1 of 3 members finished and member 2's epoch {epoch}"
        resumed = Recommender(_rating_config()).fit(
            train, valid, checkpoint=checkpoint, runner=runner
        )
        _same_members(whole, resumed)


def test_reports_name_the_member_and_ray_replays_them_when_it_ends(cluster: object) -> None:
    train, valid = _split(bias_ratings())
    seen: dict[str, list[tuple[int, int, float]]] = {"here": [], "ray": []}
    for name, runner in (("here", None), ("ray", RayRunner("auto"))):
        Recommender(_rating_config(members=2)).fit(
            train,
            valid,
            on_epoch=lambda r, name=name: seen[name].append((r.member, r.epoch, r.loss)),
            runner=runner,
        )
    assert {m for m, _, _ in seen["here"]} == {1, 2}
    assert sorted(seen["ray"]) == sorted(seen["here"])  # same epochs, same losses


def test_a_failing_member_fails_the_run_with_its_own_error(cluster: object) -> None:
    train, valid = _split(bias_ratings())
    config = _rating_config()
    config = replace(config, training=replace(config.training, learning_rate=1e30))
    with pytest.raises(TrainingDivergedError, match="diverged"):
        Recommender(config).fit(train, valid, runner=RayRunner("auto"))

    def boom(shared: int, x: int) -> int:
        raise ValueError(f"task {x} of {shared}")

    with pytest.raises(ValueError, match="task 1 of 9"):
        list(RayRunner("auto").run(boom, [1], shared=9))


def test_separate_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="member_threads"):
        EnsembleConfig(members=2, fit="separate", member_threads=0)
    with pytest.raises(ConfigError, match="fit"):
        EnsembleConfig(members=2, fit="parallel")  # type: ignore[arg-type]
    stacked = RunConfig(
        schema=RATINGS, model=ModelConfig(type="biased_mf", dim=2),
        ensemble=EnsembleConfig(members=2), seed=0,
    )  # fmt: skip
    train, valid = _split(bias_ratings())
    with pytest.raises(ValueError, match='fit = "separate"'):
        Recommender(stacked).fit(train, valid, runner=SequentialRunner())


def _cli_config(tmp_path: Path, fit: str) -> Path:
    bias_ratings().to_csv(tmp_path / "ratings.csv", index=False)
    config = tmp_path / f"{fit}.toml"
    config.write_text(
        rating_toml(
            tmp_path / "ratings.csv",
            epochs=3,
            extra=f'[ensemble]\nmembers = 2\nfit = "{fit}"\n',
        )
    )
    return config


def test_cli_train_with_ray_saves_the_run_without_ray(tmp_path: Path, cluster: object) -> None:
    config = _cli_config(tmp_path, "separate")
    runs = []
    for name, extra in (("here", []), ("ray", ["--ray", "auto"])):
        out = tmp_path / name
        done = CliRunner().invoke(
            wager.cli.app, ["train", str(config), "--out", str(out), "--json", *extra]
        )
        assert done.exit_code == 0, done.output
        runs.append(json.loads((out / "metrics.json").read_text()))
    here, there = runs
    assert (here["trained_on"], there["trained_on"]) == ("sequential", "ray")
    for key, value in here.items():
        if isinstance(value, float) and "seconds" not in key:
            assert there[key] == value, key


def test_cli_ray_refusals_name_the_flag_and_touch_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stacked = _cli_config(tmp_path, "stacked")
    separate = _cli_config(tmp_path, "separate")
    cases = [
        ([str(stacked), "--ray", "auto"], 'fit = \\"separate\\"'),
        ([str(separate), "--ray", "auto", "--nproc", "2"], "--nproc 2"),
        ([str(separate), "--ray", " "], "cluster address"),
    ]
    for args, message in cases:
        done = CliRunner().invoke(
            wager.cli.app, ["train", *args, "--out", str(tmp_path / "run"), "--json"]
        )
        assert done.exit_code == 2, done.output
        error = json.loads(done.output)["error"]
        assert error["flag"] == "--ray" and message in json.dumps(error["message"])
        assert not (tmp_path / "run").exists()

    def missing(module: str, extra: str, feature: str) -> object:
        raise MissingExtraError(f"{feature} needs 'ray': pip install \"wager[{extra}]\"")

    monkeypatch.setattr(fanout, "require", missing)
    done = CliRunner().invoke(
        wager.cli.app,
        ["train", str(separate), "--ray", "auto", "--out", str(tmp_path / "run"), "--json"],
    )
    assert done.exit_code == 2
    assert "wager[dist]" in done.output and not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- wager tune --ray


def _search(tmp_path: Path, search: str) -> Path:
    bias_ratings().to_csv(tmp_path / "ratings.csv", index=False)
    path = tmp_path / "search.toml"
    path.write_text(rating_toml(tmp_path / "ratings.csv", epochs=1) + search)
    return path


def _tune(path: Path, out: Path, *extra: str) -> dict:
    done = CliRunner().invoke(
        wager.cli.app,
        ["tune", str(path), "--trials", "4", "--out", str(out), "--json", *extra],
    )
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)


def test_tune_on_ray_scores_each_trial_as_the_sequential_search(
    tmp_path: Path, cluster: object
) -> None:
    """One epoch (nothing to prune) and four trials, all among TPE's random startup
    trials: a round of two proposes the parameters a sequential search proposes one at a
    time, and each trial's objective is the same to the last bit."""
    pytest.importorskip("optuna")
    path = _search(
        tmp_path, '[search]\n"model.dim" = [2, 16]\n"training.learning_rate" = [1e-3, 1e-1]\n'
    )
    here = _tune(path, tmp_path / "here")
    there = _tune(path, tmp_path / "ray", "--ray", "auto", "--parallel", "2")
    assert [t["state"] for t in there["trials"]] == ["complete"] * 4
    key = ("trial", "objective", "model.dim", "training.learning_rate")
    assert [{k: t[k] for k in key} for t in there["trials"]] == [
        {k: t[k] for k in key} for t in here["trials"]
    ]
    assert there["best_params"] == here["best_params"]
    assert (tmp_path / "ray" / "best.toml").read_text() == (
        tmp_path / "here" / "best.toml"
    ).read_text()


def test_tune_on_ray_records_a_diverging_trial_as_failed(tmp_path: Path, cluster: object) -> None:
    pytest.importorskip("optuna")
    path = _search(tmp_path, '[search]\n"training.learning_rate" = {choices = [0.05, 1e15]}\n')
    result = _tune(path, tmp_path / "ray", "--ray", "auto")
    states = {t["training.learning_rate"]: t["state"] for t in result["trials"]}
    assert states == {0.05: "complete", 1e15: "fail"}


def test_tune_parallel_needs_ray(tmp_path: Path) -> None:
    path = tmp_path / "search.toml"
    path.write_text(rating_toml(tmp_path / "none.csv") + '[search]\n"model.dim" = [2, 4]\n')
    done = CliRunner().invoke(
        wager.cli.app, ["tune", str(path), "--parallel", "2", "--out", str(tmp_path / "o")]
    )
    assert done.exit_code == 2 and "--ray" in done.output
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- recommend --ray


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small trained rating run (2 stacked members) to recommend from."""
    tmp = tmp_path_factory.mktemp("run")
    bias_ratings().to_csv(tmp / "ratings.csv", index=False)
    config = tmp / "run.toml"
    config.write_text(rating_toml(tmp / "ratings.csv", epochs=2, extra="[ensemble]\nmembers = 2\n"))
    done = CliRunner().invoke(wager.cli.app, ["train", str(config), "--out", str(tmp / "run")])
    assert done.exit_code == 0, done.output
    return tmp / "run"


def _recommend(run: Path, out: Path, *extra: str) -> None:
    args = ["recommend", str(run), "--all-users", "-k", "3", "--chunk-users", "7",
            "--out", str(out), "--json", *extra]  # fmt: skip
    done = CliRunner().invoke(wager.cli.app, args)
    assert done.exit_code == 0, done.output


def _parts(folder: Path) -> pd.DataFrame:
    marker = json.loads((folder / "_wager_recommendations.json").read_text())
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*marker["parts"], "_wager_recommendations.json"]
    )
    frame = pd.concat([pd.read_parquet(folder / p) for p in marker["parts"]], ignore_index=True)
    assert marker["rows"] == len(frame)
    return frame


def test_recommend_on_ray_writes_what_it_writes_here(
    run_dir: Path, tmp_path: Path, cluster: object
) -> None:
    """60 users in chunks of 7: 9 parts, the same rows here and on Ray, greedy and a
    seeded epsilon-greedy policy (each chunk's draws seeded from the seed and its index);
    one Parquet file equals the parts put together."""
    explore = ["--policy", "epsilon_greedy", "--epsilon", "0.5", "--seed", "3"]
    for name, policy in (("greedy", []), ("eps", explore)):
        _recommend(run_dir, tmp_path / f"{name}-here", *policy)
        _recommend(run_dir, tmp_path / f"{name}-ray", *policy, "--ray", "auto")
        here, there = _parts(tmp_path / f"{name}-here"), _parts(tmp_path / f"{name}-ray")
        assert len(json.loads((tmp_path / f"{name}-here" / "_wager_recommendations.json")
                              .read_text())["parts"]) == 9  # fmt: skip
        assert len(here) == 60 * 3 and here["user"].nunique() == 60
        pd.testing.assert_frame_equal(here, there)
        _recommend(run_dir, tmp_path / f"{name}.parquet", *policy, "--ray", "auto")
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / f"{name}.parquet"), here)
    eps = _parts(tmp_path / "eps-here")
    greedy = _parts(tmp_path / "greedy-here")
    assert not eps["item"].equals(greedy["item"])  # the policy explored


def test_a_parts_folder_is_replaced_only_when_wager_wrote_it(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "recs"
    _recommend(run_dir, out)
    first = _parts(out)
    args = ["recommend", str(run_dir), "--all-users", "--out", str(out), "--json"]
    again = CliRunner().invoke(wager.cli.app, args)
    assert again.exit_code == 2 and "--overwrite" in again.output
    done = CliRunner().invoke(wager.cli.app, [*args, "-k", "2", "--overwrite"])
    assert done.exit_code == 0, done.output
    assert len(_parts(out)) == len(first) * 2 // 3  # k = 2 now, one part
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me\n")
    refused = CliRunner().invoke(
        wager.cli.app,
        ["recommend", str(run_dir), "--all-users", "--out", str(mine), "--overwrite", "--json"],
    )
    assert refused.exit_code == 2 and "did not write" in refused.output
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
