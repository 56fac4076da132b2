"""Test-suite settings: one intra-op thread (tests use tiny tensors, where thread start-up
costs more than it saves, and CI machines are small)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

torch.set_num_threads(1)


def bias_ratings(seed: int = 1) -> pd.DataFrame:
    """60 users rate 12 of 30 items: round(3 + user bias + item bias + noise), 1..5
    (columns user_id "u0".., item_id "i0".., rating)."""
    rng = np.random.default_rng(seed)
    user_bias, item_bias = rng.normal(0, 1, 60), rng.normal(0, 1, 30)
    rows = [
        (f"u{u}", f"i{i}",
         int(np.clip(np.rint(3 + user_bias[u] + item_bias[i] + rng.normal(0, 0.5)), 1, 5)))
        for u in range(60)
        for i in rng.choice(30, size=12, replace=False)
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating"])


def rating_toml(
    path: object,
    *,
    model: str = "biased_mf",
    epochs: int = 2,
    valid_fraction: float = 0.1,
    schema_extra: str = "",
    model_extra: str = "",
    extra: str = "",
) -> str:
    """The run config TOML of a small rating table (user_id, item_id, rating) at ``path``,
    which the CLI tests train on: ``schema_extra`` / ``model_extra`` add lines to [schema] /
    [model], ``extra`` whole sections after [training]."""
    return f"""\
seed = 0

[schema]
user = "user_id"
item = "item_id"
label = "rating"
label_kind = "rating"
rating_range = [1.0, 5.0]
{schema_extra}
[data]
path = "{path}"
format = "table"
split = "random"
test_fraction = 0.2
valid_fraction = {valid_fraction}

[model]
type = "{model}"
dim = 4
{model_extra}
[training]
epochs = {epochs}
batch_size = 64

{extra}"""


#: the smallest model config the simulator tests fit each simulated evening
TINY_SIMULATION_MODEL = """\
seed = 0
[data]
format = "synthetic"
valid_fraction = 0.0
[model]
type = "factorization"
dim = 4
[training]
batch_size = 256
epochs = 1
[ensemble]
members = 2
[uncertainty]
cold_start = "population"
population_draws = 2
"""
