"""recommend()'s candidate step through a top-k index (``Recommender.index_items``).

The reference is recommend() without an index, which scores every catalogue item: with the
exact index the lists, scores, predictions, confidences and a policy's slates must be the
same (scores to float rounding), also after the catalogue changes; FAISS's flat index and an
IVF index that visits every list are exhaustive too, so they must bring the same items.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import wager.cli
from wager.config import (
    EnsembleConfig,
    EvaluationConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    UncertaintyConfig,
)
from wager.data.schema import Schema
from wager.policies import PolicyState, policy_from_name
from wager.recommender import Recommender

RATINGS = Schema(
    user="user_id", item="item_id", label="rating", label_kind="rating", rating_range=(1, 5)
)


def _ratings(users: int = 80, items: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    bu, bi = rng.normal(0, 1, users), rng.normal(0, 1, items)
    rows = [
        (f"u{u}", f"i{i}", float(np.clip(np.rint(3 + bu[u] + bi[i] + rng.normal(0, 0.5)), 1, 5)))
        for u in range(users)
        for i in rng.choice(items, size=15, replace=False)
    ]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating"])


@pytest.fixture(scope="module")
def rating_run() -> Recommender:
    df = _ratings().sample(frac=1.0, random_state=0)
    config = RunConfig(
        schema=RATINGS,
        model=ModelConfig(type="biased_mf", dim=4),
        training=TrainConfig(epochs=3, batch_size=128, learning_rate=0.05),
        ensemble=EnsembleConfig(members=2),
        seed=0,
    )
    return Recommender(config).fit(df.iloc[:1000], df.iloc[1000:])


@pytest.fixture(scope="module")
def retrieval_run() -> Recommender:
    """Two-tower retrieval whose list confidence needs each user's whole score row."""
    df = _ratings(seed=1).sample(frac=1.0, random_state=0)
    config = RunConfig(
        schema=Schema(user="user_id", item="item_id", label="rating", label_kind="rating"),
        model=ModelConfig(type="two_tower", dim=4, hidden=[8], positive_threshold=3.0),
        training=TrainConfig(epochs=2, batch_size=64, learning_rate=0.02),
        evaluation=EvaluationConfig(k=5),
        ensemble=EnsembleConfig(members=2),
        uncertainty=UncertaintyConfig(cold_start="population", population_draws=3),
        seed=0,
    )
    return Recommender(config).fit(df.iloc[:1000], df.iloc[1000:])


USERS = ["u0", "u3", "u17", "u79", "someone new"]


def _without_index(rec: Recommender, **kwargs: object) -> pd.DataFrame:
    rec.candidates_ = None
    return rec.recommend(USERS, **kwargs)  # type: ignore[arg-type]


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """The same lists, up to the order of items whose scores tie (a clipped rating of 5,
    say: the index orders them by the unclipped score, scoring every item by position):
    per user the same scores, the same items above the lowest listed score, and for the
    items both list the same predictions."""
    assert a["user"].tolist() == b["user"].tolist()
    np.testing.assert_allclose(a["score"], b["score"], rtol=0, atol=1e-5)
    for user, part in a.groupby("user", sort=False):
        other = b[b["user"] == user]
        floor = part["score"].min() + 1e-5
        assert set(part.loc[part["score"] > floor, "item"]) == set(
            other.loc[other["score"] > floor, "item"]
        )
    both = a.merge(b, on=["user", "item"], suffixes=("", "_b"))
    assert len(both) >= 0.8 * len(a)
    for column in ("mean", "std", "low", "high", "confidence", "propensity"):
        if column in a:
            np.testing.assert_allclose(both[column], both[f"{column}_b"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("fixture", ["rating_run", "retrieval_run"])
def test_the_exact_index_lists_what_scoring_every_item_lists(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    rec: Recommender = request.getfixturevalue(fixture)
    for kwargs in ({"k": 5}, {"k": 4, "exclude_seen": False}):
        base = _without_index(rec, **kwargs)
        got = rec.index_items().recommend(USERS, **kwargs)  # type: ignore[arg-type]
        _same(base, got)
    ucb = policy_from_name("ucb", beta=1.0)
    base = _without_index(rec, k=3, policy=ucb, candidates=20)
    got = rec.index_items().recommend(USERS, k=3, policy=ucb, candidates=20)
    _same(base, got)
    thompson = policy_from_name("thompson")
    base = _without_index(rec, k=3, policy=thompson, state=PolicyState.seeded(4))
    rec.index_items()
    got = rec.recommend(USERS, k=3, policy=thompson, state=PolicyState.seeded(4))
    _same(base, got)


def test_the_index_follows_the_catalogue(rating_run: Recommender) -> None:
    rec = rating_run
    rec.index_items()
    top = rec.recommend(["u0"], k=3)["item"].tolist()
    rec.retire_items([top[0]])
    after = rec.recommend(["u0"], k=3)
    assert top[0] not in after["item"].tolist()
    _same(after, _without_index(rec, k=3).query("user == 'u0'").reset_index(drop=True))


def test_faiss_exhaustive_indexes_bring_the_same_items(rating_run: Recommender) -> None:
    faiss_index = pytest.importorskip("wager.retrieval.faiss_index")
    pytest.importorskip("faiss")
    base = _without_index(rating_run, k=5)
    for index in (faiss_index.FaissIndex("flat"),
                  faiss_index.FaissIndex("ivf", nlist=8, nprobe=8)):  # fmt: skip
        got = rating_run.index_items(index).recommend(USERS, k=5)
        _same(base, got)


def test_a_model_without_item_vectors_is_refused(tmp_path: Path) -> None:
    df = _ratings()
    config = RunConfig(
        schema=RATINGS,
        model=ModelConfig(type="dcn", dim=4),
        training=TrainConfig(epochs=1, batch_size=256),
        seed=0,
    )
    rec = Recommender(config).fit(df.iloc[:1000], df.iloc[1000:])
    with pytest.raises(ValueError, match="no item vectors to index"):
        rec.index_items()


def test_cli_recommend_with_an_index(tmp_path: Path) -> None:
    from conftest import rating_toml

    _ratings().to_csv(tmp_path / "r.csv", index=False)
    config = tmp_path / "run.toml"
    config.write_text(rating_toml(tmp_path / "r.csv", epochs=2))
    run = tmp_path / "run"
    assert (
        CliRunner().invoke(wager.cli.app, ["train", str(config), "--out", str(run)]).exit_code == 0
    )
    args = ["recommend", str(run), "--user", "u1", "--user", "u2", "-k", "4", "--json"]
    plain = json.loads(CliRunner().invoke(wager.cli.app, args).stdout)
    exact = json.loads(CliRunner().invoke(wager.cli.app, [*args, "--index", "exact"]).stdout)
    items = [[r["user"], r["item"]] for r in plain["recommendations"]]
    assert [[r["user"], r["item"]] for r in exact["recommendations"]] == items
    bad = CliRunner().invoke(wager.cli.app, [*args, "--index", "lsh"])
    assert bad.exit_code == 2 and "--index" in bad.output
