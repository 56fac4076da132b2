"""Multi-task models from the config: [[model.tasks]] trains a rating and a derived click
together; predict_tasks / evaluate report every task; CLI and save / load carry them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from conftest import rating_toml
from wager.cli import app
from wager.config import ConfigError, ModelConfig, RunConfig, TaskConfig, TrainConfig
from wager.data.schema import Schema
from wager.recommender import Recommender

SCHEMA = Schema(label="rating", label_kind="rating", rating_range=(1.0, 5.0))
TASKS = (
    TaskConfig("rating", "rating", kind="rating", likelihood="gaussian"),
    TaskConfig("like", "rating", kind="click", threshold=4.0, weight=0.5),
)


def _ratings(n_users=60, n_items=40, per_user=20, seed=0) -> pd.DataFrame:
    # rating = 3 + user taste + item quality + noise, rounded into 1..5: the item quality
    # decides most of which ratings reach 4 (the derived click)
    rng = np.random.default_rng(seed)
    taste, quality = rng.normal(0, 0.4, n_users), rng.normal(0, 1.2, n_items)
    rows = []
    for u in range(n_users):
        for i in rng.choice(n_items, per_user, replace=False):
            r = np.clip(np.rint(3 + taste[u] + quality[i] + rng.normal(0, 0.5)), 1, 5)
            rows.append((f"u{u}", f"i{i}", float(r)))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating"])


def _config(**model) -> RunConfig:
    return RunConfig(
        schema=SCHEMA,
        model=ModelConfig(type="dcn", dim=8, hidden=(16,), tasks=TASKS, **model),
        training=TrainConfig(epochs=30, batch_size=128, learning_rate=0.01, patience=3),
        seed=0,
    )


@pytest.fixture(scope="module")
def fitted():
    df = _ratings().sample(frac=1.0, random_state=0).reset_index(drop=True)
    train, valid, test = df.iloc[:800], df.iloc[800:1000], df.iloc[1000:]
    return Recommender(_config()).fit(train, valid), test


def test_every_task_is_predicted_and_evaluated(fitted, tmp_path):
    rec, test = fitted
    preds = rec.predict_tasks(test["user_id"], test["item_id"])
    assert list(preds) == ["rating", "like"]
    rating, like = preds["rating"], preds["like"]
    # the primary task is predict()'s: a Gaussian head gives a std
    torch.testing.assert_close(rating.mean, rec.predict(test["user_id"], test["item_id"]).mean)
    assert rating.std is not None and bool((rating.std > 0).all())
    assert bool(((like.mean > 0) & (like.mean < 1)).all())  # a click probability
    metrics = rec.evaluate(test)
    tasks = metrics["tasks"]
    assert set(tasks) == {"rating", "like"}
    assert tasks["rating"]["rmse"] == pytest.approx(metrics["rmse"])
    # the derived click is learnt: AUC well above chance, and it agrees with the rating task
    y = (test["rating"].to_numpy() >= 4).astype(float)
    assert tasks["like"]["auc"] > 0.75
    assert {"log_loss", "ece", "brier"} <= set(tasks["like"])
    corr = np.corrcoef(like.mean.numpy(), rating.mean.numpy())[0, 1]
    assert corr > 0.5, corr
    # hand check of the log-loss the report gives
    p = np.clip(like.mean.numpy().astype(float), 1e-15, 1 - 1e-15)
    ref = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert tasks["like"]["log_loss"] == pytest.approx(ref, rel=1e-5)
    rec.save(tmp_path / "run")
    back = Recommender.load(tmp_path / "run")
    again = back.predict_tasks(test["user_id"], test["item_id"])
    torch.testing.assert_close(again["like"].mean, like.mean)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: ModelConfig(type="dcn", tasks=(TASKS[0],)),
            "two or more",
        ),
        (
            lambda: ModelConfig(type="dcn", tasks=(TASKS[0], TASKS[0])),
            "distinct names",
        ),
        (lambda: TaskConfig("x", "rating", kind="click", likelihood="gaussian"), "'point'"),
        (lambda: TaskConfig("x", "rating", threshold=4.0), "unset for kind = 'rating'"),
        (lambda: TaskConfig("bad name", "rating"), "letters, digits"),
        (lambda: ModelConfig(type="biased_mf", tasks=TASKS), "not used by type = 'biased_mf'"),
    ],
)
def test_bad_task_configs_name_the_key(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_a_task_table_without_its_label_is_one_line_per_missing_key(tmp_path: Path):
    toml = rating_toml(tmp_path / "r.csv", model="dcn", model_extra=(
        '[[model.tasks]]\nname = "a"\n\n[[model.tasks]]\nlabel = "rating"\nweight = "x"\n'
    ))  # fmt: skip
    (tmp_path / "c.toml").write_text(toml)
    with pytest.raises(ConfigError) as info:
        RunConfig.load(tmp_path / "c.toml")
    assert [line.split(": ", 1)[1] for line in info.value.problems] == [
        "[[model.tasks]] #1 needs label = ... (a string)",
        "[[model.tasks]] #2 needs name = ... (a string)",
    ]


def test_the_primary_task_must_be_the_schemas_label():
    cfg = RunConfig(schema=SCHEMA, model=ModelConfig(type="dcn", tasks=(TASKS[1], TASKS[0])))
    with pytest.raises(ValueError, match="primary task"):
        Recommender(cfg).spec.validate()


TASKS_TOML = """\
hidden = [16]

[[model.tasks]]
name = "rating"
label = "rating"

[[model.tasks]]
name = "like"
label = "rating"
kind = "click"
threshold = 4.0
weight = 0.5
"""


def test_two_task_config_trains_and_evaluates_through_the_cli(tmp_path: Path):
    _ratings().to_csv(tmp_path / "r.csv", index=False)
    (tmp_path / "mt.toml").write_text(
        rating_toml(tmp_path / "r.csv", model="dcn", epochs=5, model_extra=TASKS_TOML)
    )
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(tmp_path / "mt.toml"), "--out", str(run),
                                      "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert set(payload["tasks"]) == {"rating", "like"}
    assert 0 <= payload["tasks"]["like"]["auc"] <= 1
    result = CliRunner().invoke(app, ["evaluate", str(run)])
    assert result.exit_code == 0, result.output
    assert "like.auc" in result.output and "rating.rmse" in result.output
