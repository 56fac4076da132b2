"""wager: recommendations that know how sure they are.

The main names are importable from the package itself; each is imported on first use, so
that ``import wager`` stays cheap (it imports neither torch nor pandas, nor even
``importlib.metadata``, which ``__version__`` reads on first use):

>>> import wager
>>> wager.Prediction.__name__
'Prediction'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "Recommender": "wager.recommender",
    "RunConfig": "wager.config",
    "Prediction": "wager.prediction",
    "MixturePrediction": "wager.prediction",
    "Interval": "wager.prediction",
    "Schema": "wager.data.schema",
    "Categorical": "wager.data.schema",
    "Numeric": "wager.data.schema",
    "MultiCategorical": "wager.data.schema",
    "Text": "wager.data.schema",
    "Dataset": "wager.data.dataset",
    "load_dataset": "wager.data.loaders",
    "SyntheticWorld": "wager.data.synthetic",
    "WorldConfig": "wager.data.synthetic",
    "MCDropout": "wager.uncertainty.mc_dropout",
    "PostHocChain": "wager.uncertainty.chain",
    "Scorer": "wager.recommender",
    "ModelSpec": "wager.recommender",
    "RunDirectory": "wager.runs",
    "RunError": "wager.runs",
    "ConfigError": "wager.config",
    "Vector": "wager.data.schema",
    "SplitConformal": "wager.uncertainty.conformal",
    "PlattScaling": "wager.uncertainty.calibration",
    "TemperatureScaling": "wager.uncertainty.calibration",
    "IsotonicCalibration": "wager.uncertainty.calibration",
    "BruteForceIndex": "wager.retrieval",
    "WagerError": "wager.errors",
    "DataError": "wager.errors",
    "NotFittedError": "wager.errors",
    "MissingExtraError": "wager.errors",
}

__all__ = [
    "BruteForceIndex",
    "Categorical",
    "ConfigError",
    "DataError",
    "Dataset",
    "Interval",
    "IsotonicCalibration",
    "MCDropout",
    "MissingExtraError",
    "MixturePrediction",
    "ModelSpec",
    "MultiCategorical",
    "NotFittedError",
    "Numeric",
    "PlattScaling",
    "PostHocChain",
    "Prediction",
    "Recommender",
    "RunConfig",
    "RunDirectory",
    "RunError",
    "Schema",
    "Scorer",
    "SplitConformal",
    "SyntheticWorld",
    "TemperatureScaling",
    "Text",
    "Vector",
    "WagerError",
    "WorldConfig",
    "__version__",
    "load_dataset",
]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wager")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (PEP 562), then keep it here."""
    if name == "__version__":
        globals()[name] = value = _version()
        return value
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'wager' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and IDEs see; nothing is imported at run time
    __version__: str
    from wager.config import ConfigError, RunConfig
    from wager.data.dataset import Dataset
    from wager.data.loaders import load_dataset
    from wager.data.schema import Categorical, MultiCategorical, Numeric, Schema, Text, Vector
    from wager.data.synthetic import SyntheticWorld, WorldConfig
    from wager.errors import DataError, MissingExtraError, NotFittedError, WagerError
    from wager.prediction import Interval, MixturePrediction, Prediction
    from wager.recommender import ModelSpec, Recommender, Scorer
    from wager.retrieval import BruteForceIndex
    from wager.runs import RunDirectory, RunError
    from wager.uncertainty.calibration import (
        IsotonicCalibration,
        PlattScaling,
        TemperatureScaling,
    )
    from wager.uncertainty.chain import PostHocChain
    from wager.uncertainty.conformal import SplitConformal
    from wager.uncertainty.mc_dropout import MCDropout
