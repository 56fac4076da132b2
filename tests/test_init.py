"""The package's public surface: ``__all__``, lazy imports, ``__version__``, ``py.typed``."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import wager


def test_every_public_name_resolves_to_a_wager_object() -> None:
    assert len(wager.__all__) == len(set(wager.__all__))
    for name in wager.__all__:
        value = getattr(wager, name)
        if name != "__version__":
            assert value.__name__ == name
            assert value.__module__.startswith("wager."), (name, value.__module__)
    assert set(wager.__all__) <= set(dir(wager))


def test_main_names_are_exported() -> None:
    from wager.prediction import Prediction
    from wager.recommender import Recommender

    assert wager.Recommender is Recommender and wager.Prediction is Prediction
    assert {"RunConfig", "Schema", "load_dataset", "WagerError", "DataError"} <= set(wager.__all__)


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        wager.Recomender  # noqa: B018
    except AttributeError as exc:
        assert "module 'wager' has no attribute 'Recomender'" in str(exc)
    else:
        raise AssertionError("no AttributeError")


def test_import_wager_imports_neither_torch_nor_pandas() -> None:
    code = (
        "import sys, wager; "
        "print(sorted(m for m in ('torch', 'pandas', 'numpy', 'importlib.metadata') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_version_comes_from_the_installed_metadata() -> None:
    assert wager.__version__ == version("wager")


def test_py_typed_marker_ships_with_the_package() -> None:
    assert (Path(wager.__file__).parent / "py.typed").is_file()
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert 'wager = ["py.typed", "examples/*.toml"]' in pyproject
