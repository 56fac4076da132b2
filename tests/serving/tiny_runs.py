"""Tiny trained runs for the serving tests: a two-member ``biased_mf`` rating ensemble on
30 users x 12 items (5 ratings each), trained in about a second per version.

Cold start is ``"population"`` (an unknown user is scored as draws of known users): with the
default OOV row, on this tiny model the unknown user's median std (0.024) is below the known
users' (0.032), so the OOV path would not be wider; with population draws it is (0.053)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from conftest import rating_toml
from wager.config import RunConfig
from wager.recommender import Recommender

N_ITEMS = 12
N_USERS = 30
EXTRA = '[ensemble]\nmembers = 2\n[uncertainty]\ncold_start = "population"\npopulation_draws = 4\n'


def ratings(seed: int = 0) -> pd.DataFrame:
    """30 users ("u0".."u29") x 5 of 12 items ("i0".."i11"), ratings 1..5 at random."""
    rng = np.random.default_rng(seed)
    items = [f"i{i}" for i in range(N_ITEMS)]
    rows = [
        (f"u{u}", i, int(rng.integers(1, 6)))
        for u in range(N_USERS)
        for i in rng.choice(items, size=5, replace=False)
    ]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating"])


def train_registry(folder: Path, versions: tuple[str, ...] = ("v1",)) -> Path:
    """A registry folder holding one trained run per name of ``versions`` (seeds 0, 1, ...);
    returns ``folder / "registry"``."""
    df = ratings()
    df.to_csv(folder / "ratings.csv", index=False)
    registry = folder / "registry"
    for seed, version in enumerate(versions):
        toml = folder / f"{version}.toml"
        toml.write_text(
            rating_toml(folder / "ratings.csv", extra=EXTRA).replace("seed = 0", f"seed = {seed}")
        )
        Recommender(RunConfig.load(toml)).fit(df).save(registry / version)
    return registry


# a Gaussian head (two outputs), three members, the local variance model (covariates of the
# user and item ids) and a normalised conformal interval: every step the fast path must
# reproduce; cold start through the learned OOV row (the fast path's own case)
FAST_EXTRA = """[ensemble]
members = 3
[uncertainty]
local_variance = true
conformal = "normalized"
[evaluation]
relevance_threshold = 4.0
"""


def train_fast_registry(folder: Path) -> Path:
    """A one-version registry ("v1") of a model the serving fast path takes (see
    ``FAST_EXTRA``), trained on :func:`ratings` less 30% validation rows (the chain's
    calibration rows); returns the registry folder."""
    df = ratings()
    df.to_csv(folder / "ratings.csv", index=False)
    toml = folder / "fast.toml"
    model = 'likelihood = "gaussian"\nmean_loss = "mse"\noov_rate = 0.1\n'
    config = rating_toml(folder / "ratings.csv", epochs=5, model_extra=model, extra=FAST_EXTRA)
    toml.write_text(config)
    valid = df.sample(frac=0.3, random_state=0)
    train = df.drop(valid.index)
    Recommender(RunConfig.load(toml)).fit(train, valid).save(folder / "registry" / "v1")
    return folder / "registry"
