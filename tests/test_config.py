"""Config dataclasses: TOML round trip and validation messages naming the field."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest

from wager.config import (
    DataConfig,
    EnsembleConfig,
    EvaluationConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    UncertaintyConfig,
    dumps_toml,
)
from wager.data.schema import Categorical, MultiCategorical, Numeric, Schema, Text


def test_run_config_toml_round_trip(tmp_path):
    cfg = RunConfig(
        schema=Schema(
            label="click",
            rating_range=None,
            timestamp="day",
            context=(Categorical("position"),),
            user_features=(
                Categorical("seg", min_count=3),
                Numeric("age", log1p=True),
                Numeric("age_group", bins=(18, 25.5, 35)),
            ),
            item_features=(
                MultiCategorical("tags", sep=";"),
                Text("title", n_buckets=64),
                Numeric("year", bins=15),
            ),
        ),
        model=ModelConfig(dim=8),
        training=TrainConfig(epochs=3, grad_clip=1.5),
        ensemble=EnsembleConfig(members=3, bootstrap=False, holdout=0.1),
        seed=7,
    )
    path = tmp_path / "config.toml"
    cfg.save(path)
    assert RunConfig.load(path) == cfg


def test_clone_is_replace():
    cfg = RunConfig()
    other = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dim=4))
    assert other.model.dim == 4 and cfg.model.dim == 16


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: ModelConfig(dim=0), "[model] dim = 0"),
        (lambda: TrainConfig(learning_rate=-1.0), "[training] learning_rate = -1.0"),
        (lambda: TrainConfig(optimizer="sgd"), "[training] optimizer = 'sgd'"),
        (lambda: TrainConfig(device="tpu"), "[training] device = 'tpu'"),
        (lambda: EnsembleConfig(members=1), "[ensemble] members = 1"),
        (lambda: Schema(label_kind="stars"), "label_kind"),
        (lambda: Schema(rating_range=(5, 1)), "rating_range"),
        (lambda: Schema(impressions="n"), "impressions and Schema.clicks go together"),
        (lambda: Categorical("x", min_count=0), "min_count"),
        (lambda: RunConfig.from_dict({"modle": {}}), "unknown config sections ['modle']"),
        (lambda: RunConfig.from_dict({"model": {"dims": 3}}), "[model] has unknown keys ['dims']"),
    ],
)
def test_validation_messages_name_field_and_value(build, fragment):
    with pytest.raises(ValueError) as exc:
        build()
    assert fragment in str(exc.value)


def test_bad_toml_names_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[model\n")
    with pytest.raises(ValueError, match=r"bad\.toml: invalid TOML"):
        RunConfig.load(p)


def test_dumps_toml_escapes_strings():
    assert dumps_toml({"a": 'x"y', "b": [1, 2], "c": True}) == 'a = "x\\"y"\nb = [1, 2]\nc = true\n'


def _every_section(ensemble: EnsembleConfig | None) -> RunConfig:
    return RunConfig(
        schema=Schema(
            user="uid",
            item="iid",
            label="stars",
            label_kind="rating",
            rating_range=(0.5, 5.0),
            weight="w",
            timestamp="ts",
            user_features=(Categorical("zip", min_count=2),),
        ),
        data=DataConfig(
            path="data/ratings.csv",
            format="table",
            split="temporal",
            test_fraction=0.25,
            valid_fraction=0.0,
            user_features=False,
            item_features=True,
            drop_features=("zip", "title"),
            synthetic_rows=5000,
        ),
        model=ModelConfig(
            type="dcn",
            dim=8,
            init_std=0.01,
            user_min_count=2,
            item_min_count=3,
            hidden=(32, 16),
            dropout=0.25,
            likelihood="gaussian",
            reg=1e-4,
            bias_reg=1e-3,
            temperature=0.05,
            logq_correction=False,
            remove_accidental_hits=False,
            item_bias=True,
            user_dropout=0.1,
            in_batch_negatives=False,
            full_softmax=True,
            negatives=4,
            loss_reduction="sum",
            normalize=True,
            cross_layers=2,
            low_rank=4,
            positive_threshold=3.5,
            oov_rate=0.05,
        ),
        training=TrainConfig(
            epochs=5,
            batch_size=256,
            learning_rate=3e-3,
            weight_decay=1e-5,
            optimizer="adamw",
            patience=3,
            grad_clip=2.0,
            device="auto",
            lr_schedule="cosine",
            warmup_steps=10,
            mixed_precision=True,
            validation_metric="top_k_accuracy@50",
        ),
        ensemble=ensemble,
        evaluation=EvaluationConfig(
            k=20, top_k_accuracy=(1, 10), relevance_threshold=4.0, max_users=500
        ),
        uncertainty=UncertaintyConfig(
            mc_dropout_samples=30,
            calibrator="isotonic",
            conformal="normalized",
            variance_scaling=True,
            confidence_levels=(0.8, 0.9),
            plots=False,
        ),
        seed=11,
    )


@pytest.mark.parametrize(
    "ensemble", [EnsembleConfig(members=4, bootstrap=False), None], ids=["ensemble", "single"]
)
def test_toml_round_trip_with_every_section_set(tmp_path, ensemble):
    cfg = _every_section(ensemble)
    path = tmp_path / "run.toml"
    cfg.save(path)
    back = RunConfig.load(path)
    assert back == cfg
    assert back.model.hidden == (32, 16) and isinstance(back.model.hidden, tuple)
    assert back.model.low_rank == 4
    assert back.training.validation_metric == "top_k_accuracy@50"
    assert back.ensemble == ensemble
    text = path.read_text()
    assert ("[ensemble]" in text) == (ensemble is not None)
    # the file is plain TOML that tomllib reads back to the same dict
    assert tomllib.loads(text) == cfg.to_dict()


def test_round_trip_leaves_unset_optionals_unset(tmp_path):
    cfg = RunConfig(seed=None)
    path = tmp_path / "run.toml"
    cfg.save(path)
    back = RunConfig.load(path)
    assert back == cfg
    assert back.seed is None and back.schema is None and back.ensemble is None
    assert back.model.low_rank is None and back.training.validation_metric is None


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: ModelConfig(user_dropout=1.0), "[model] user_dropout = 1.0"),
        (lambda: ModelConfig(user_dropout=-0.1), "[model] user_dropout = -0.1"),
        (lambda: ModelConfig(oov_rate=1.0), "[model] oov_rate = 1.0"),
        (lambda: ModelConfig(type="svd"), "[model] type = 'svd'"),
        (lambda: ModelConfig(type="neumf", negatives=0), "[model] negatives = 0"),
        (lambda: ModelConfig(low_rank=0), "[model] low_rank = 0"),
        (lambda: ModelConfig(hidden=(8, 0)), "[model] hidden = (8, 0)"),
        (lambda: ModelConfig(hard_negatives=-1), "[model] hard_negatives = -1"),
        (
            lambda: ModelConfig(type="two_tower", in_batch_negatives=False),
            "[model] in_batch_negatives = False",
        ),
        (
            lambda: TrainConfig(validation_metric="ndcg"),
            "[training] validation_metric = 'ndcg'",
        ),
        (
            lambda: TrainConfig(validation_metric="ndcg@0"),
            "[training] validation_metric = 'ndcg@0'",
        ),
        (lambda: TrainConfig(validation_metric="auc"), "[training] validation_metric = 'auc'"),
        (lambda: TrainConfig(lr_schedule="step"), "[training] lr_schedule = 'step'"),
        (lambda: TrainConfig(warmup_steps=-1), "[training] warmup_steps = -1"),
        (lambda: DataConfig(valid_fraction=1.0), "[data] valid_fraction = 1.0"),
        (lambda: DataConfig(valid_fraction=-0.1), "[data] valid_fraction = -0.1"),
        (lambda: DataConfig(test_fraction=0.0), "[data] test_fraction = 0.0"),
        (lambda: DataConfig(synthetic_rows=999), "[data] synthetic_rows = 999"),
        (lambda: DataConfig(split=""), "[data] split = ''"),
        (lambda: EvaluationConfig(k=0), "[evaluation] k = 0"),
        (lambda: EnsembleConfig(holdout=1.0), "[ensemble] holdout = 1.0"),
        (lambda: UncertaintyConfig(mc_dropout_samples=1), "[uncertainty] mc_dropout_samples = 1"),
        (lambda: UncertaintyConfig(calibrator="beta"), "[uncertainty] calibrator = 'beta'"),
        (lambda: UncertaintyConfig(conformal="cqr"), "[uncertainty] conformal = 'cqr'"),
        (
            lambda: UncertaintyConfig(confidence_levels=(0.9, 1.0)),
            "[uncertainty] confidence_levels = (0.9, 1.0)",
        ),
        (lambda: EnsembleConfig(holdout=-0.1), "[ensemble] holdout = -0.1"),
        (lambda: EvaluationConfig(max_users=0), "[evaluation] max_users = 0"),
    ],
)
def test_invalid_values_name_section_field_and_value(build, fragment):
    with pytest.raises(ValueError) as exc:
        build()
    assert fragment in str(exc.value)
    assert "must be" in str(exc.value)


def test_neumf_without_negatives_says_why():
    with pytest.raises(ValueError, match=r">= 1 for type = 'neumf'"):
        ModelConfig(type="neumf", negatives=0)
    assert ModelConfig(type="neumf", negatives=1).negatives == 1


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        ('[model]\ntype = "svd"\n', "[model] type = 'svd'"),
        ('[training]\nvalidation_metric = "ndcg"\n', "[training] validation_metric = 'ndcg'"),
        ("[data]\nvalid_fraction = 1.0\n", "[data] valid_fraction = 1.0"),
        ("[model]\nuser_dropout = 1.5\n", "[model] user_dropout = 1.5"),
        ("[data]\nsplitt = 'random'\n", "[data] has unknown keys ['splitt']"),
    ],
)
def test_invalid_values_in_a_toml_file_name_the_field(tmp_path, toml, fragment):
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ValueError) as exc:
        RunConfig.load(path)
    assert fragment in str(exc.value)
