"""Uncertainty plots: each writes a non-empty PNG; bad inputs name the argument."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from wager.evaluation.plots import (
    confidence_curve_plot,
    coverage_curve,
    reliability_diagram,
    std_histogram,
    uncertainty_plots,
)
from wager.prediction import Prediction

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 1000


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.mark.parametrize("binning", ["equal_mass", "equal_width"])
def test_reliability_diagram_writes_png(tmp_path, rng, binning):
    p = rng.random(200)
    y = (rng.random(200) < p).astype(float)
    out = reliability_diagram(p, y, tmp_path / "sub" / "rel.png", n_bins=10, binning=binning)
    assert out == tmp_path / "sub" / "rel.png"
    assert_png(out)


def test_coverage_curve_writes_png(tmp_path):
    out = coverage_curve([0.5, 0.8, 0.9, 0.95], [0.45, 0.82, 0.88, 0.96], tmp_path / "cov.png")
    assert_png(out)


def test_confidence_curve_plot_writes_png_with_and_without_oracle(tmp_path):
    curve = {0.1: 0.5, 0.5: 0.8, 1.0: 1.1}
    assert_png(confidence_curve_plot(curve, tmp_path / "a.png"))
    # string keys, as stored in the report JSON, are accepted
    oracle = {"0.1": 0.1, "0.5": 0.4, "1": 1.1}
    assert_png(confidence_curve_plot(curve, tmp_path / "b.png", oracle=oracle))


def test_std_histogram_writes_png(tmp_path, rng):
    out = std_histogram(rng.uniform(0.1, 0.5, 300), rng.uniform(0.4, 1.0, 40), tmp_path / "h.png")
    assert_png(out)
    # identical values in both groups still get a valid bin range
    assert_png(std_histogram([0.3], [0.3], tmp_path / "flat.png", labels=("a", "b")))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda d: reliability_diagram([0.1, 0.2], [1.0], d / "x.png"), "targets has 1"),
        (lambda d: coverage_curve([0.5, 0.9], [0.5], d / "x.png"), "coverages has 1"),
        (lambda d: coverage_curve([0.5, 1.5], [0.5, 0.9], d / "x.png"), "levels must be"),
        (lambda d: confidence_curve_plot({}, d / "x.png"), "curve is empty"),
        (lambda d: confidence_curve_plot({"a": 1.0}, d / "x.png"), "curve keys"),
        (lambda d: std_histogram([0.1], [], d / "x.png"), "std_oov is empty"),
        (lambda d: std_histogram([], [0.1], d / "x.png"), "std_known is empty"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(tmp_path, call, message):
    with pytest.raises(ValueError, match=message):
        call(tmp_path)


def test_uncertainty_plots_gaussian_with_oov(tmp_path, rng):
    n = 200
    std = rng.uniform(0.2, 1.0, n)
    mean = rng.normal(3.0, 1.0, n)
    y = mean + std * rng.normal(size=n)
    oov = rng.random(n) < 0.2
    pred = Prediction(mean=torch.tensor(mean), std=torch.tensor(std))
    written = uncertainty_plots(pred, torch.tensor(y), tmp_path / "plots", oov_mask=oov)
    assert set(written) == {"coverage_curve", "confidence_curve", "std_histogram"}
    for name in written.values():
        assert_png(tmp_path / "plots" / name)
    with pytest.raises(ValueError, match="oov_mask has 3 entries"):
        uncertainty_plots(pred, y, tmp_path, oov_mask=oov[:3])


def test_uncertainty_plots_probability_and_deterministic(tmp_path, rng):
    p = rng.uniform(0.05, 0.95, 100)
    clicks = (rng.random(100) < p).astype(float)
    pred = Prediction(mean=torch.tensor(p), std=torch.full((100,), 0.05, dtype=torch.float64))
    written = uncertainty_plots(pred, clicks, tmp_path / "p", probability=True)
    # 0/1 clicks cannot fall inside a CTR interval in any meaningful sense: no coverage curve
    assert set(written) == {"reliability_diagram", "confidence_curve"}
    # against true CTRs (simulated data) the coverage of the CTR interval is meaningful
    truth = np.clip(p + rng.normal(0.0, 0.05, 100), 0.0, 1.0)
    written = uncertainty_plots(pred, truth, tmp_path / "t", probability=True)
    assert set(written) == {"reliability_diagram", "coverage_curve", "confidence_curve"}
    det = uncertainty_plots(
        Prediction(mean=torch.tensor(p)), clicks, tmp_path / "d", probability=True
    )
    assert det == {"reliability_diagram": "reliability_diagram.png"}
    assert_png(tmp_path / "d" / "reliability_diagram.png")
    assert uncertainty_plots(Prediction(mean=torch.tensor(p)), clicks, tmp_path / "e") == {}
    with pytest.raises(ValueError, match="targets has 3 entries"):
        uncertainty_plots(pred, clicks[:3], tmp_path)


def test_import_and_drawing_leave_pyplot_unloaded(tmp_path):
    # pyplot holds the global figure manager and fixes the process backend; the plots
    # render through Figure + FigureCanvasAgg and must never load it.
    code = (
        "import sys, wager.evaluation.plots as p;"
        f"p.coverage_curve([0.5], [0.5], {str(tmp_path / 'c.png')!r});"
        "assert 'matplotlib.pyplot' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG_MAGIC


def test_std_histogram_custom_title_is_drawn(tmp_path, rng, monkeypatch):
    import wager.evaluation.plots as plots

    titles = []
    original = plots._save

    def spy(fig, path):
        titles.append(fig.axes[0].get_title())
        return original(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    a, b = rng.uniform(0.1, 0.5, 100), rng.uniform(0.4, 1.0, 30)
    out = std_histogram(a, b, tmp_path / "t.png", labels=("real", "cold"), title="ratio 1.26")
    assert out == tmp_path / "t.png"
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert_png(std_histogram(a, b, tmp_path / "d.png"))
    assert titles == ["ratio 1.26", "Predictive std"]  # None keeps the default title
