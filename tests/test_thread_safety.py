"""One fitted Recommender shared by many threads (the serving case): 8 threads x 20 calls of
``predict`` / ``recommend`` / ``scorer_`` on the same inputs must each return exactly the
single-threaded result, with no exception. Before the fix two threads' ``functional_call``
swapped their weights into the one shared (meta-device) module and crashed with "Tensor on
device meta is not on the expected device cpu"."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from conftest import rating_toml
from serving.tiny_runs import ratings
from wager.config import RunConfig
from wager.models.fields import Field
from wager.models.mf import BiasedMF
from wager.recommender import Recommender
from wager.training.trainer import StackedModel
from wager.uncertainty.mc_dropout import MCDropout

THREADS = 8
CALLS = 20
# unknown users / items ("u_new", "i_new") go through the cold-start path as well
USERS = [f"u{u % 30}" for u in range(40)] + ["u_new", "u3"]
ITEMS = [f"i{i % 12}" for i in range(40)] + ["i4", "i_new"]

MODELS = {
    # two members, unknown users scored as draws of known users (the serving tests' model)
    "ensemble": '[ensemble]\nmembers = 2\n[uncertainty]\ncold_start = "population"\n'
    "population_draws = 4\n",
    # one member: the plain functional_call path (no vmap)
    "single": "",
    # dropout on at prediction, seeded: the draws come from torch's global generator
    "mc_dropout": "[uncertainty]\nmc_dropout_samples = 4\n",
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def fitted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Recommender:
    """A Recommender fitted in about a second on 30 users x 12 items."""
    folder: Path = tmp_path_factory.mktemp(request.param)
    df = ratings()
    df.to_csv(folder / "ratings.csv", index=False)
    model_extra = "dropout = 0.1\n" if request.param == "mc_dropout" else ""
    toml = rating_toml(folder / "ratings.csv", model_extra=model_extra, extra=MODELS[request.param])
    (folder / "run.toml").write_text(toml)
    return Recommender(RunConfig.load(folder / "run.toml")).fit(df)


def hammer(call: Callable[[], Any]) -> list[Any]:
    """``call()`` CALLS times in each of THREADS threads started together; every result, in
    completion order. An exception in any thread is raised here."""
    start = threading.Barrier(THREADS)

    def work() -> list[Any]:
        start.wait()
        return [call() for _ in range(CALLS)]

    with ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(work) for _ in range(THREADS)]
        return [r for f in futures for r in f.result()]


def test_predict_from_threads_equals_single_threaded(fitted: Recommender) -> None:
    reference = fitted.predict(USERS, ITEMS)
    # the single point model has no std; the others' std and samples must match too
    assert (reference.std is None) == (fitted.spec.members == 1 and "mc" not in reference.method)
    results = hammer(lambda: fitted.predict(USERS, ITEMS))
    assert len(results) == THREADS * CALLS
    for got in results:
        assert torch.equal(got.mean, reference.mean)
        for name in ("std", "samples"):
            want, have = getattr(reference, name), getattr(got, name)
            assert (have is None) == (want is None)
            assert want is None or torch.equal(have, want)


def test_recommend_from_threads_equals_single_threaded(fitted: Recommender) -> None:
    users = ["u0", "u7", "u_new", "u29"]
    reference = fitted.recommend(users, k=5)
    assert len(reference) == 4 * 5
    for got in hammer(lambda: fitted.recommend(users, k=5)):
        pd.testing.assert_frame_equal(got, reference, check_exact=True)


def test_scorer_from_threads_equals_single_threaded(fitted: Recommender) -> None:
    reference = fitted.scorer_.mean_scores(USERS)
    assert reference.shape == (len(USERS), 12)
    for got in hammer(lambda: fitted.scorer_.mean_scores(USERS)):
        assert torch.equal(got, reference)


def test_dropout_sampling_leaves_other_threads_in_evaluation_mode() -> None:
    # thread A draws MC-dropout samples (dropout on for its calls) while thread B runs the
    # same stack in evaluation mode: B's outputs never see a dropout mask, A's stay the
    # seeded draws, and the stack's own mode is never changed
    def make() -> BiasedMF:
        fields = [Field("user.u", "index", 3)], [Field("item.i", "index", 3)]
        return BiasedMF(*fields, dim=8, init_std=0.5, dropout=0.5, global_mean=3.0)

    stack = StackedModel(make, members=2, seed=0).train(False)
    batch = {"user.u": torch.tensor([1, 2, 0]), "item.i": torch.tensor([0, 1, 2])}
    mc = MCDropout(samples=5, seed=3)
    plain, drawn = stack.call("forward", batch), mc.sample_outputs(stack, batch)
    assert drawn.std(0).min() > 0  # dropout really is on in the sampler's calls

    def mixed() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return stack.call("forward", batch), mc.sample_outputs(stack, batch)

    for got_plain, got_drawn in hammer(mixed):
        assert torch.equal(got_plain, plain)
        assert torch.equal(got_drawn, drawn)
    assert not stack.base.training
