"""ModelSpec: task / head / flags from the registry, and every cross-section rule up front."""

from __future__ import annotations

import pytest

from wager.config import EnsembleConfig, ModelConfig, RunConfig, UncertaintyConfig
from wager.data.schema import Schema
from wager.models.heads import BernoulliHead, DeepDensityHead, GaussianHead, PointHead
from wager.models.registry import MODEL_TYPES
from wager.recommender import ModelSpec

RATING = Schema(label="rating", label_kind="rating", rating_range=(1, 5))
CLICK = Schema(label="click")


def _spec(schema=RATING, **kw) -> ModelSpec:
    model = kw.pop("model", ModelConfig(type="biased_mf"))
    return ModelSpec.from_config(RunConfig(schema=schema, model=model, **kw))


@pytest.mark.parametrize(
    ("model_type", "schema", "task"),
    [
        ("factorization", CLICK, "click"),
        ("biased_mf", RATING, "rating"),
        ("two_tower", RATING, "retrieval"),
        ("als", RATING, "retrieval"),
        ("neumf", RATING, "implicit"),
        ("dcn", RATING, "rating"),
        ("dcn", CLICK, "click"),
    ],
)
def test_task_comes_from_the_registry(model_type, schema, task):
    assert set(MODEL_TYPES) == {"factorization", "biased_mf", "two_tower", "neumf", "dcn", "als"}
    negatives = {"negatives": 2} if model_type in ("two_tower", "neumf") else {}
    spec = _spec(schema, model=ModelConfig(type=model_type, **negatives))
    assert spec.task == task
    assert spec.pointwise == (task in ("click", "rating"))
    assert spec.ranking == (not spec.pointwise)


def test_heads_and_flags():
    g = _spec(model=ModelConfig(type="biased_mf", likelihood="gaussian"))
    assert isinstance(g.head, GaussianHead) and g.head.support == (1.0, 5.0)
    assert g.noise_head and g.has_std and not g.mixture and g.members == 1
    p = _spec(model=ModelConfig(type="biased_mf"))
    assert isinstance(p.head, PointHead) and not p.has_std
    e = _spec(model=ModelConfig(type="biased_mf"), ensemble=EnsembleConfig(members=3))
    assert e.has_std and e.members == 3 and e.method.startswith("ensemble(members=3")
    c = _spec(CLICK, model=ModelConfig(type="factorization"))
    assert isinstance(c.head, BernoulliHead)
    ctr = Schema(label="ctr", label_kind="ctr", impressions="n", clicks="c")
    d = _spec(ctr, model=ModelConfig(type="dcn", likelihood="ddn"))
    assert isinstance(d.head, DeepDensityHead) and d.mixture and d.has_std
    assert _spec(RATING, model=ModelConfig(type="two_tower")).head is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": ModelConfig(type="dcn", likelihood="mdn")}, "models a click-through rate"),
        (
            {"uncertainty": UncertaintyConfig(mc_dropout_samples=5)},
            r"mc_dropout_samples = 5 needs dropout",
        ),
        (
            {"uncertainty": UncertaintyConfig(cold_start="population")},
            "cold_start = 'population'",
        ),
        ({"uncertainty": UncertaintyConfig(calibrator="platt")}, "calibrates click"),
        ({"uncertainty": UncertaintyConfig(conformal="normalized")}, "model is deterministic"),
        (
            {
                "model": ModelConfig(type="two_tower"),
                "uncertainty": UncertaintyConfig(conformal="homoscedastic"),
            },
            "not to a retrieval model",
        ),
        (
            {
                "model": ModelConfig(type="two_tower"),
                "ensemble": EnsembleConfig(members=2, holdout=0.1),
            },
            r"\[ensemble\] holdout = 0.1 applies to rating and click",
        ),
    ],
)
def test_cross_section_rules_fail_before_any_data(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _spec(**kwargs).validate()


def test_click_rules():
    with pytest.raises(ValueError, match="local_variance refits the std of rating"):
        _spec(CLICK, model=ModelConfig(type="factorization"),
              uncertainty=UncertaintyConfig(local_variance=True)).validate()  # fmt: skip
    with pytest.raises(ValueError, match="likelihood = 'ddn' needs aggregated CTR rows"):
        _spec(CLICK, model=ModelConfig(type="dcn", likelihood="ddn")).validate()
    with pytest.raises(ValueError, match="calibrator = 'platt' maps a click probability"):
        _spec(CLICK, model=ModelConfig(type="dcn", likelihood="mdn"),
              uncertainty=UncertaintyConfig(calibrator="platt")).validate()  # fmt: skip
    _spec(CLICK, model=ModelConfig(type="factorization"),
          uncertainty=UncertaintyConfig(calibrator="platt")).validate()  # fmt: skip
