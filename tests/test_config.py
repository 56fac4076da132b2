"""Config dataclasses: TOML round trip and validation messages naming the field."""

from __future__ import annotations

import dataclasses

import pytest

from wager.config import EnsembleConfig, ModelConfig, RunConfig, TrainConfig, dumps_toml
from wager.data.schema import Categorical, MultiCategorical, Numeric, Schema, Text


def test_run_config_toml_round_trip(tmp_path):
    cfg = RunConfig(
        schema=Schema(
            label="click",
            rating_range=None,
            timestamp="day",
            context=(Categorical("position"),),
            user_features=(Categorical("seg", min_count=3), Numeric("age", log1p=True)),
            item_features=(MultiCategorical("tags", sep=";"), Text("title", n_buckets=64)),
        ),
        model=ModelConfig(dim=8),
        training=TrainConfig(epochs=3, grad_clip=1.5),
        ensemble=EnsembleConfig(members=3, bootstrap=False),
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
