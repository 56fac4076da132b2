"""Large catalogues: the sampled softmax against a NumPy reference (uniform and popularity
negatives, log-Q terms), the full -> sampled switch at ``[model] full_softmax_max_items``, the
chunked per-epoch validation, the config mistakes, and peak memory on a 200k-item catalogue."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from wager.config import ConfigError, ModelConfig, RunConfig, TrainConfig
from wager.data.schema import Schema
from wager.models.fields import Field
from wager.models.registry import MODEL_TYPES, ModelInputs, softmax_kind
from wager.recommender import Recommender
from wager.recommender.fitting import RetrievalSampler, ranking_validator

N_ITEMS = 6  # catalogue rows 0..5; item id index = row + 1 (0 is OOV)
COUNTS = np.array([8.0, 4.0, 2.0, 1.0, 1.0, 0.0])  # training positives per catalogue row


def _sampler(q: torch.Tensor | None, negatives: int, seed: int = 0) -> RetrievalSampler:
    rows_item = np.repeat(np.arange(N_ITEMS), COUNTS.astype(int))  # the 16 positives
    users = np.arange(len(rows_item)) % 3 + 1
    return RetrievalSampler(
        rows={
            "user.user_id": torch.tensor(users),
            "item.item_id": torch.tensor(rows_item + 1),
        },
        items={"item.item_id": torch.arange(1, N_ITEMS + 1)},
        row_item=torch.tensor(rows_item),
        item_probability=torch.tensor(COUNTS / COUNTS.sum(), dtype=torch.float32),
        full_softmax=False,
        negatives=negatives,
        generator=torch.Generator().manual_seed(seed),
        negative_probability=q,
    )


def _two_tower(n_items: int | None, **settings: object) -> torch.nn.Module:
    m = ModelConfig(type="two_tower", dim=3, **settings)  # type: ignore[arg-type]
    inputs = ModelInputs(
        user=[Field("user.user_id", "index", 4)],
        item=[Field("item.item_id", "index", N_ITEMS + 1)],
        context=[],
        head=None,
        global_mean=0.0,
        item_id_key="item.item_id",
        n_items=n_items,
    )
    torch.manual_seed(0)
    return MODEL_TYPES["two_tower"].build(m, inputs)


def _reference(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> np.ndarray:
    """(B,) cross-entropies by explicit logsumexp over the columns: the B in-batch items
    (log(B p_j) subtracted) then the N negatives (log(N q_n) subtracted); a column with the
    row's own item id (other than its own diagonal) is left out."""
    with torch.no_grad():
        u = model.user_embedding(batch).double().numpy()
        v = model.item_embedding(batch).double().numpy()
        vn = model.item_embedding(batch, prefix="neg.item.").double().numpy()
    ids = batch["item.item_id"].numpy()
    neg_ids = batch["neg.item.item_id"].numpy()
    z = np.concatenate(
        [
            u @ v.T - batch["item.logq"].double().numpy()[None, :],
            u @ vn.T - batch["neg.item.logq"].double().numpy()[None, :],
        ],
        axis=1,
    )
    b = len(ids)
    hit = np.concatenate([ids[:, None] == ids[None, :], ids[:, None] == neg_ids[None, :]], 1)
    hit[np.arange(b), np.arange(b)] = False  # the positive itself stays
    out = []
    for i in range(b):
        cols = z[i][~hit[i]]
        top = cols.max()
        out.append(top + math.log(np.exp(cols - top).sum()) - z[i, i])
    return np.array(out)


@pytest.mark.parametrize("sampling", ["uniform", "popularity"])
def test_sampled_loss_equals_the_explicit_logsumexp(sampling):
    # popularity, power 0.75: q_i = c_i^0.75 / sum_j c_j^0.75 (row 5 has no positives: q = 0)
    weight = COUNTS**0.75
    q = (
        torch.tensor(weight / weight.sum(), dtype=torch.float32)
        if sampling == "popularity"
        else None
    )
    sampler = _sampler(q, negatives=5)
    batch = sampler(torch.tensor([0, 3, 8, 12, 14, 15]))
    # log-Q terms: in-batch log(B p_i) with B = 6, p = count / 16; negatives log(N q) with N = 5
    rows = batch["item.item_id"].numpy() - 1
    np.testing.assert_allclose(batch["item.logq"].numpy(), np.log(6 * COUNTS[rows] / 16), rtol=1e-6)
    drawn = batch["neg.item.item_id"].numpy() - 1
    expected_q = np.full(N_ITEMS, 1 / N_ITEMS) if q is None else weight / weight.sum()
    np.testing.assert_allclose(
        batch["neg.item.logq"].numpy(), np.log(5 * expected_q[drawn]), rtol=1e-6
    )
    model = _two_tower(None, negatives=5, negative_sampling=sampling)
    model.train(False)
    with torch.no_grad():
        loss = float(model.loss(batch))
    assert loss == pytest.approx(_reference(model, batch).mean(), rel=1e-5)


def test_popularity_negatives_are_drawn_with_probability_q():
    weight = COUNTS**0.75
    q = weight / weight.sum()
    sampler = _sampler(torch.tensor(q, dtype=torch.float32), negatives=200_000, seed=3)
    drawn, logq = sampler.draw_negatives()
    freq = np.bincount(drawn.numpy(), minlength=N_ITEMS) / 200_000
    # binomial std of a share over 200k draws <= 0.0012: 5 std
    np.testing.assert_allclose(freq, q, atol=0.006)
    assert freq[5] == 0.0  # an item without positives has q = 0: never drawn
    np.testing.assert_allclose(logq.numpy(), np.log(200_000 * q[drawn.numpy()]), rtol=1e-6)


def test_softmax_switches_to_sampled_above_full_softmax_max_items():
    settings = {"full_softmax": True, "full_softmax_max_items": 3, "negatives": 2}
    m = ModelConfig(type="two_tower", **settings)  # type: ignore[arg-type]
    assert softmax_kind(m, 3) == "full" and softmax_kind(m, 4) == "sampled"
    full, sampled = _two_tower(3, **settings), _two_tower(4, **settings)
    # full: the catalogue is the negatives, no in-batch columns, no log-Q
    assert (full.in_batch_negatives, full.logq_correction) == (False, False)
    # sampled: in-batch negatives + the extra negatives, log-Q corrected
    assert (sampled.in_batch_negatives, sampled.logq_correction) == (True, True)


def _implicit_rows(n_users: int, n_items: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [(u, int(i), 1.0) for u in range(n_users) for i in rng.choice(n_items, 3, False)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating"])


def _run(model: ModelConfig, members: int | None = None) -> RunConfig:
    from wager.config import EnsembleConfig, EvaluationConfig

    return RunConfig(
        schema=Schema(label="rating", label_kind="rating", rating_range=(0.0, 5.0)),
        model=model,
        training=TrainConfig(epochs=2, batch_size=8, learning_rate=0.05, optimizer="adam"),
        ensemble=EnsembleConfig(members=members, bootstrap=False) if members else None,
        evaluation=EvaluationConfig(k=3),
        seed=0,
    )


def test_fit_on_a_larger_catalogue_says_it_trains_by_sampled_softmax():
    df = _implicit_rows(6, 4)  # a catalogue of 4 items
    model = ModelConfig(type="two_tower", dim=2, full_softmax=True, full_softmax_max_items=3)
    with pytest.warns(
        UserWarning,
        match=r"catalogue has 4 items, more than \[model\] "
        r"full_softmax_max_items = 3: training by sampled softmax",
    ):
        rec = Recommender(_run(model)).fit(df)
    assert rec.metrics_["softmax"] == "sampled"
    model = ModelConfig(type="two_tower", dim=2, full_softmax=True, full_softmax_max_items=4)
    assert Recommender(_run(model)).fit(df).metrics_["softmax"] == "full"


def test_chunked_validation_gives_the_unchunked_metric():
    df = _implicit_rows(40, 30)
    train, valid = df.iloc[::2], df.iloc[1::2]
    rec = Recommender(_run(ModelConfig(type="two_tower", dim=4, negatives=5), members=3))
    rec.fit(train, valid)
    scorer = rec.scorer_
    seen = scorer.catalogue.seen_matrix(train, rec.spec.schema, False)
    params = scorer.stack.params
    whole = ranking_validator(scorer, valid, seen, cells=10**9)(params)
    for cells in (1, 3 * 30 * 7):  # one user per pass; 7 users per pass
        torch.testing.assert_close(
            ranking_validator(scorer, valid, seen, cells=cells)(params), whole
        )
    # NumPy reference of member 0's NDCG@3, training items excluded, ties to the lower row
    users = list(dict.fromkeys(valid["user_id"].astype(str)))
    scores = scorer.member_scores(users)[0].numpy().astype(np.float64)
    cat = scorer.catalogue
    ndcg = []
    for r, user in enumerate(users):
        s = scores[r].copy()
        s[cat.item_rows(train[train.user_id.astype(str) == user].item_id).astype(int)] = -np.inf
        rel = set(cat.item_rows(valid[valid.user_id.astype(str) == user].item_id).astype(int))
        top = np.argsort(-s, kind="stable")[:3]
        dcg = sum(1 / np.log2(j + 2) for j, i in enumerate(top) if i in rel)
        ndcg.append(dcg / sum(1 / np.log2(j + 2) for j in range(min(3, len(rel)))))
    assert float(-whole[0]) == pytest.approx(np.mean(ndcg), abs=1e-6)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"full_softmax_max_items": 0, "full_softmax": True},
            "[model] full_softmax_max_items = 0 is invalid: must be an integer >= 1",
        ),
        (
            {"full_softmax_max_items": 500},
            "[model] full_softmax_max_items = 500 is invalid: must be left out unless "
            "full_softmax = true",
        ),
        (
            {"negative_sampling": "popularity"},
            "[model] negative_sampling = 'popularity' is invalid: must be 'uniform' (or left "
            "out) when negatives = 0: set negatives >= 1",
        ),
        (
            {"negative_sampling": "popular", "negatives": 4},
            "[model] negative_sampling = 'popular' is invalid",
        ),
        (
            {"negative_power": 0.0, "negative_sampling": "popularity", "negatives": 4},
            "[model] negative_power = 0.0 is invalid: must be a number > 0",
        ),
        (
            {"negative_power": 0.5, "negatives": 4},
            "[model] negative_power = 0.5 is invalid: must be left out unless "
            "negative_sampling = 'popularity'",
        ),
    ],
)
def test_bad_large_catalogue_settings(settings, message):
    with pytest.raises(ConfigError) as err:
        ModelConfig(type="two_tower", **settings)
    assert message in str(err.value)


@pytest.mark.parametrize("name", ["full_softmax_max_items", "negative_sampling", "negative_power"])
def test_settings_refused_by_model_types_that_do_not_read_them(name):
    value = {"full_softmax_max_items": 50, "negative_sampling": "popularity"}.get(name, 0.5)
    with pytest.raises(ConfigError) as err:
        ModelConfig(type="neumf", negatives=4, **{name: value})
    assert f"[model] {name} = {value!r} is not used by type = 'neumf'" in str(err.value)
    assert "'two_tower'" in str(err.value)


MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, sys, torch
    from wager.config import ModelConfig
    from wager.models.fields import Field
    from wager.models.registry import MODEL_TYPES, ModelInputs, softmax_kind
    from wager.recommender.fitting import RetrievalSampler

    torch.set_num_threads(1)
    n_items, n_rows, n_users = 200_000, 20_000, 2_000
    m = ModelConfig(type="two_tower", dim=16, full_softmax=True, negatives=512,
                    negative_sampling="popularity")
    inputs = ModelInputs([Field("user.user_id", "index", n_users + 1)],
                         [Field("item.item_id", "index", n_items + 1)], [], None, 0.0,
                         "item.item_id", n_items=n_items)
    model = MODEL_TYPES["two_tower"].build(m, inputs)
    g = torch.Generator().manual_seed(0)
    row_item = torch.randint(0, n_items, (n_rows,), generator=g)
    counts = torch.bincount(row_item, minlength=n_items).double()
    q = counts ** 0.75
    sampler = RetrievalSampler(
        {"user.user_id": torch.randint(1, n_users + 1, (n_rows,), generator=g),
         "item.item_id": row_item + 1},
        {"item.item_id": torch.arange(1, n_items + 1)}, row_item,
        (counts / counts.sum()).float(), softmax_kind(m, n_items) == "full", m.negatives, g,
        (q / q.sum()).float())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    def step():
        loss = model.loss(sampler(torch.randint(0, n_rows, (1024,), generator=g)))
        loss.backward(); opt.step(); opt.zero_grad()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(5):
        step()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(softmax_kind(m, n_items), (after - before) * 1024, before * 1024)
    """
)


def test_sampled_training_memory_does_not_grow_with_a_200k_item_catalogue():
    # a (1024, 200k) float32 tensor is 819 MB; sampled steps must stay far below it
    src = str(Path(__file__).resolve().parents[2] / "src")
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"},
        check=True,
    ).stdout.split()
    kind, growth = out[0], int(out[1])
    assert kind == "sampled"
    # the steps' own needs: the (200k, 16) embedding gradient (12.8 MB), (B, B + N) and
    # (U, T) float32 blocks of a few MB each, and allocator slack
    assert growth < 100 * 2**20, f"peak memory grew by {growth / 2**20:.0f} MiB in 5 steps"
