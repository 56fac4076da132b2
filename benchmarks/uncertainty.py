"""Uncertainty benchmark: how good is wager's confidence, and what does it cost?

    python benchmarks/uncertainty.py --data-dir ../shared/data/ml-100k \\
        [--parts rating,clicks,density,cost] [--out results.json] [--threads 1]

Parts (JSON on stdout, progress on stderr):

- ``rating``: MovieLens-100k folds u1..u5 with ``examples/movielens-rating.toml``'s model
  as (a) a single point model, (b) a single Gaussian-head model, (c) the example's ensemble
  of Gaussian heads, (d) MC dropout over a Gaussian-head model; each with its own
  predictive interval and after split conformalisation on the validation rows
  (normalised by the predicted std); plus the homoscedastic split-conformal baseline (a
  constant width from the point model's absolute residuals). Per variant: RMSE, NLL, CRPS,
  coverage and width at 0.9, Spearman(std, |error|), RMSE of the most confident 50%,
  the confidence curve; for integer labels the 90% width snapped to the integers each
  interval holds (the like-for-like width for star ratings); and, labelled oracle and not
  deployable, the width the local variance refit reaches when fitted on the test rows'
  own residuals. Means over the folds.
- ``clicks``: the synthetic world (true CTR known): the example click model alone and as an
  ensemble, raw and after Platt / isotonic / temperature calibration: ECE against the
  true CTR, log-loss, coverage of the true CTR by the 90% epistemic interval, OOV std
  ratios per categorical feature.
- ``density``: regression vs MDN vs DDN on aggregated synthetic CTR (see density.py).
- ``cost``: top-10 with mean, std and 90% interval for every MovieLens-100k user: single
  model, Ensemble(5), MCDropout(30) as ratios to the single model; the dense all-users x
  all-items mean + std against its floor (M x the single score matrix); naive Python loops
  over members / samples in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import environment, json_ready, log
from movielens import EXAMPLES, FOLDS
from wager.config import EnsembleConfig, RunConfig, UncertaintyConfig
from wager.evaluation.metrics import expected_calibration_error, log_loss, rmse
from wager.evaluation.uncertainty import uncertainty_report
from wager.pipeline import RunData, load_run_data
from wager.prediction import Prediction
from wager.recommender import Recommender
from wager.uncertainty.conformal import SplitConformal
from wager.uncertainty.local_variance import LocalVarianceScaling

PARTS = ("rating", "clicks", "density", "cost")
LEVEL = 0.9
MC_SAMPLES = 30
MC_DROPOUT = 0.1  # dropout on p_u and q_i for the MC-dropout variant


# ----------------------------------------------------------------------------- rating


def rating_variants(base: RunConfig) -> dict[str, RunConfig]:
    """The four rating models, all from the example config (same data, same features)."""
    # population cold-start rows need ensemble members to spread over
    single = replace(
        base, ensemble=None, uncertainty=replace(base.uncertainty, cold_start="learned")
    )
    point = replace(single, model=replace(base.model, likelihood="point", oov_rate=0.0))
    gauss = replace(single, model=replace(base.model, likelihood="gaussian"))
    ensemble = replace(
        base,
        model=replace(base.model, likelihood="gaussian"),
        ensemble=base.ensemble or EnsembleConfig(members=5, bootstrap=False, holdout=0.1),
    )
    mc = replace(
        gauss,
        model=replace(gauss.model, dropout=MC_DROPOUT),
        uncertainty=replace(gauss.uncertainty, mc_dropout_samples=MC_SAMPLES),
    )
    out = {
        "point": replace(point, uncertainty=UncertaintyConfig(conformal="homoscedastic")),
        "gaussian": gauss,
        "ensemble_gaussian": ensemble,
        "mc_dropout": mc,
    }
    return {
        name: replace(
            cfg,
            uncertainty=replace(
                cfg.uncertainty,
                conformal="homoscedastic" if name == "point" else "normalized",
                variance_scaling=False,
                # the std-refitting step of the example config, for every model with a std
                local_variance=base.uncertainty.local_variance and name != "point",
            ),
        )
        for name, cfg in out.items()
    }


def score(pred: Prediction, y: np.ndarray) -> dict[str, Any]:
    """RMSE plus the uncertainty report of one prediction.

    For integer labels (star ratings) also ``snapped_width@0.9``: the mean width of each
    90% interval shrunk to the integers it holds, ``[ceil(low), floor(high)]`` (0 when it
    holds one or none). Shrinking keeps exactly the labels an interval covers, so the
    coverage is unchanged; comparing snapped widths of two methods is the like-for-like
    comparison for integer labels (a continuous width also pays for the gaps between them).
    """
    out: dict[str, Any] = {"rmse": rmse(pred.mean.numpy(), y)}
    out.update(uncertainty_report(pred, y, levels=(0.5, 0.8, LEVEL, 0.95)))
    if np.all(y == np.round(y)):
        iv = pred.interval(LEVEL)
        lo, hi = np.ceil(iv.low.numpy() - 1e-9), np.floor(iv.high.numpy() + 1e-9)
        out[f"snapped_width@{LEVEL:g}"] = float(np.mean(np.maximum(hi - lo, 0.0)))
    if "rmse_most_confident_50pct" in out:  # not for a constant-width (std-free) prediction
        out["rmse_most_confident_50pct_over_rmse"] = out["rmse_most_confident_50pct"] / out["rmse"]
    return out


def rating_fold(cfg: RunConfig, rd: RunData) -> tuple[Recommender, dict[str, Any]]:
    """Fit one variant on one fold; its scores with and without conformalisation."""
    s = cfg.schema
    assert s is not None and rd.valid is not None
    start = time.perf_counter()
    rec = Recommender(cfg).fit(
        rd.train, rd.valid, user_features=rd.user_features, item_features=rd.item_features
    )
    fit_seconds = time.perf_counter() - start
    y = rd.test[s.label].to_numpy(dtype=np.float64)
    users, items = rd.test[s.user].to_numpy(), rd.test[s.item].to_numpy()
    raw = rec.scorer_.prediction(users, items, rd.test)[0]
    conformal = rec.predict(users, items, rd.test)
    out: dict[str, Any] = {"fit_seconds": fit_seconds}
    if raw.std is not None:
        out["model_interval"] = score(raw, y)
    out["conformal"] = score(conformal, y)
    if raw.std is None:  # the point model: report its constant interval only
        out["conformal"]["width_is_constant"] = True
    else:
        # the homoscedastic baseline on THIS model's mean: what the adaptive std buys,
        # separated from what a better mean buys
        vu, vi = rd.valid[s.user].to_numpy(), rd.valid[s.item].to_numpy()
        valid_raw = rec.scorer_.prediction(vu, vi, rd.valid)[0]
        flat = SplitConformal(normalized=False).fit(
            valid_raw, rd.valid[s.label].to_numpy(dtype=np.float64)
        )
        out["homoscedastic_same_mean"] = score(flat.conformalize(raw), y)
        if rec.chain_.local_variance is not None:
            out["oracle_local_variance"] = oracle_local_variance(rec, rd, flat.conformalize(raw))
    return rec, out


def oracle_local_variance(rec: Recommender, rd: RunData, flat: Prediction) -> dict[str, Any]:
    """What the best log-linear std of this feature family could buy: NOT deployable.

    The model's local variance refit (same features, same sign constraints) is fitted on
    the TEST rows' own squared residuals, then split-conformalised on all validation rows
    and scored on the test rows: a bound on the width any std of this family can reach,
    against the homoscedastic interval on the same mean (``flat``).
    """
    s = rec.schema
    assert s.label is not None and rd.valid is not None and rec.chain_.local_variance is not None
    support = rec.chain_.support_covariates
    assert support is not None
    y = rd.test[s.label].to_numpy(dtype=np.float64)
    yv = rd.valid[s.label].to_numpy(dtype=np.float64)
    raw, cov = rec.scorer_.prediction(
        rd.test[s.user].to_numpy(),
        rd.test[s.item].to_numpy(),
        rd.test,
        covariates=rec.chain_.covariates,
    )
    raw_v, cov_v = rec.scorer_.prediction(
        rd.valid[s.user].to_numpy(),
        rd.valid[s.item].to_numpy(),
        rd.valid,
        covariates=rec.chain_.covariates,
    )
    oracle = LocalVarianceScaling().fit(
        raw,
        y,
        cov,
        names=support.names_,
        monotone=support.monotone_,
    )
    conformal = SplitConformal(normalized=True).fit(oracle.transform(raw_v, cov_v), yv)
    out = score(conformal.conformalize(oracle.transform(raw, cov)), y)
    key = f"width@{LEVEL:g}"
    flat_iv = flat.interval(LEVEL)
    flat_width = float(np.mean((flat_iv.high - flat_iv.low).numpy()))
    out["width_vs_homoscedastic_same_mean"] = out[key] / flat_width - 1.0
    return out


def mean_report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over folds of every number (nested dicts averaged key by key)."""
    out: dict[str, Any] = {}
    for key, first in rows[0].items():
        values = [r.get(key) for r in rows]
        if isinstance(first, dict):
            out[key] = mean_report([v for v in values if isinstance(v, dict)])
        elif isinstance(first, int | float) and not isinstance(first, bool):
            out[key] = float(np.mean([float(v) for v in values]))
    return out


def rating_section(
    data_dir: Path,
    keep: dict[str, Recommender],
    partial: Path | None = None,
    folds: tuple[str, ...] = FOLDS,
) -> dict[str, Any]:
    """Part 1 (see the module docstring); per-fold results also go to ``partial``."""
    base = RunConfig.load(EXAMPLES / "movielens-rating.toml")
    variants = rating_variants(base)
    per_fold: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for fold in folds:
        rd = load_run_data(replace(base, data=replace(base.data, split=fold)), data_dir, fold)
        for name, cfg in variants.items():
            cfg = replace(cfg, schema=rd.schema, data=replace(cfg.data, split=fold))
            log(f"rating: {name} on {fold}")
            rec, out = rating_fold(cfg, rd)
            per_fold[name].append({"fold": fold, **out})
            if fold == folds[0]:
                keep[name] = rec
        if partial is not None:  # survive a crash in a later fold or in the summary
            partial.write_text(json.dumps(json_ready(per_fold), indent=1) + "\n", encoding="utf-8")
    summary = {name: mean_report(rows) for name, rows in per_fold.items()}
    base_width = summary["point"]["conformal"][f"width@{LEVEL:g}"]
    base_cov = summary["point"]["conformal"][f"coverage@{LEVEL:g}"]
    for s in summary.values():
        c = s["conformal"]
        if "rmse_most_confident_50pct" in c:
            c["rmse_most_confident_50pct_ratio_of_means"] = (
                c["rmse_most_confident_50pct"] / c["rmse"]
            )
        c["width_vs_homoscedastic"] = c[f"width@{LEVEL:g}"] / base_width - 1.0
        snapped = f"snapped_width@{LEVEL:g}"
        if snapped in c and snapped in summary["point"]["conformal"]:
            c["snapped_width_vs_homoscedastic"] = (
                c[snapped] / summary["point"]["conformal"][snapped] - 1.0
            )
        c["coverage_minus_homoscedastic"] = c[f"coverage@{LEVEL:g}"] - base_cov
        same = s.get("homoscedastic_same_mean")
        if same is not None:
            c["width_vs_homoscedastic_same_mean"] = (
                c[f"width@{LEVEL:g}"] / same[f"width@{LEVEL:g}"] - 1.0
            )
    return {
        "protocol": "ml-100k u1..u5; each variant trains on uK.base minus the validation rows "
        f"(valid_fraction {base.data.valid_fraction:g} of uK.base, seeded), on which the "
        "conformal scores are fitted (single models also early-stop on them; ensemble members "
        "early-stop on their own holdout of the training rows); metrics on uK.test",
        "config": str(EXAMPLES / "movielens-rating.toml"),
        "mc_dropout": {"samples": MC_SAMPLES, "dropout": MC_DROPOUT},
        "homoscedastic_baseline": "point model + split conformal on |y - mean| (constant width)",
        "mean_over_folds": summary,
        "per_fold": per_fold,
    }


# ----------------------------------------------------------------------------- clicks


def clicks_section() -> dict[str, Any]:
    base = RunConfig.load(EXAMPLES / "synthetic.toml")
    rd = load_run_data(base, None, None)
    assert rd.schema is not None and rd.valid is not None
    base = replace(base, schema=rd.schema)
    s = rd.schema
    truth = rd.test["true_ctr"].to_numpy(dtype=np.float64)
    clicks = rd.test[s.label].to_numpy(dtype=np.float64)
    out: dict[str, Any] = {
        "protocol": "synthetic world (examples/synthetic.toml: temporal split, validation = "
        "the last days of training); calibrators fitted on the validation rows; ECE (15 "
        "equal-mass bins) of the predicted CTR against the true CTR of each test row",
    }
    models = {
        "single": replace(
            base, ensemble=None, uncertainty=replace(base.uncertainty, cold_start="learned")
        ),
        "ensemble": base,
    }
    for name, cfg in models.items():
        for calibrator in ("none", "platt", "isotonic", "temperature"):
            c = replace(cfg, uncertainty=replace(cfg.uncertainty, calibrator=calibrator))
            log(f"clicks: {name} + {calibrator}")
            start = time.perf_counter()
            rec = Recommender(c).fit(
                rd.train, rd.valid, user_features=rd.user_features, item_features=rd.item_features
            )
            fit = time.perf_counter() - start
            pred = rec.predict(rd.test[s.user].to_numpy(), rd.test[s.item].to_numpy(), rd.test)
            p = pred.mean.numpy().astype(np.float64)
            row: dict[str, Any] = {
                "fit_seconds": fit,
                "ece_true_ctr": expected_calibration_error(p, truth),
                "ece_clicks": expected_calibration_error(p, clicks),
                "log_loss": log_loss(clicks, p),
                "mse_true_ctr": float(np.mean((p - truth) ** 2)),
            }
            if pred.std is not None:
                iv = pred.interval(LEVEL)
                row[f"true_ctr_coverage@{LEVEL:g}"] = float(
                    np.mean((truth >= iv.low.numpy()) & (truth <= iv.high.numpy()))
                )
                row[f"width@{LEVEL:g}"] = float(np.mean((iv.high - iv.low).numpy()))
                row["oov_std_ratio"] = rec.oov_std_ratios(rd.test)
            out[f"{name}+{calibrator}"] = row
    return out


# ------------------------------------------------------------------------------- cost


def best_of(fn: Callable[[], Any], repeat: int = 3) -> float:
    """Fastest wall time of ``repeat`` calls (seconds)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def cost_section(models: dict[str, Recommender]) -> dict[str, Any]:
    single, ens, mc = models["gaussian"], models["ensemble_gaussian"], models["mc_dropout"]
    users = list(single.scorer_.catalogue.users)
    out: dict[str, Any] = {"n_users": len(users), "k": 10, "confidence_level": LEVEL}
    times = {
        name: best_of(lambda r=rec: r.recommend(users, k=10, confidence_level=LEVEL))
        for name, rec in (("single", single), ("ensemble5", ens), (f"mc_dropout{MC_SAMPLES}", mc))
    }
    out["top10_seconds"] = times
    out["top10_ratio_to_single"] = {k: v / times["single"] for k, v in times.items()}

    # dense all-users x all-items mean + std of the ensemble against its floor
    stack = ens.scorer_.stack
    assert stack is not None
    ub = ens.scorer_.encode_users(users)
    ib = ens.scorer_.encode_items()
    with torch.no_grad():
        u1 = single.scorer_.stack.call("user_factors", ub)[0]  # type: ignore[union-attr]
        v1 = single.scorer_.stack.call("item_factors", ib)[0]  # type: ignore[union-attr]
        u = stack.call("user_factors", ub)  # (M, U, d')
        v = stack.call("item_factors", ib)

        def single_scores() -> torch.Tensor:
            return u1 @ v1.T

        def dense_mean_std() -> tuple[torch.Tensor, torch.Tensor]:
            s = torch.bmm(u, v.transpose(1, 2))  # (M, U, I)
            mean = s.mean(0)
            var = (s.square().mean(0) - mean.square()).clamp_min(0.0)
            return mean, var.sqrt()

        def naive_loop() -> tuple[torch.Tensor, torch.Tensor]:
            scores = [u[m] @ v[m].T for m in range(u.shape[0])]
            s = torch.stack(scores)
            return s.mean(0), torch.std(s, dim=0)

        t_single = best_of(single_scores)
        t_dense = best_of(dense_mean_std)
        t_naive = best_of(naive_loop)
    members = u.shape[0]
    out["dense_all_pairs"] = {
        "single_score_matrix_seconds": t_single,
        "floor_seconds": members * t_single,
        "mean_std_seconds": t_dense,
        "ratio_to_floor": t_dense / (members * t_single),
        "naive_member_loop_torch_std_seconds": t_naive,
        "naive_ratio_to_floor": t_naive / (members * t_single),
        "shape": [members, len(users), int(v.shape[1])],
    }

    # MC dropout: one batched pass of S samples vs a Python loop of S passes (k=10 pairs)
    top = single.recommend(users, k=10)
    pairs_u, pairs_i = top["user"].tolist(), top["item"].tolist()
    batch = mc.scorer_.encode_pairs(pairs_u, pairs_i)
    mc_stack = mc.scorer_.stack
    assert mc_stack is not None

    def batched() -> Any:
        return mc.scorer_.outputs(batch)

    def loop() -> Any:
        mc_stack.train(True)
        try:
            with torch.no_grad():
                return torch.stack([mc_stack.call("forward", batch) for _ in range(MC_SAMPLES)])
        finally:
            mc_stack.train(False)

    t_batched, t_loop = best_of(batched), best_of(loop)
    out["mc_dropout_pairs"] = {
        "pairs": len(pairs_u),
        "samples": MC_SAMPLES,
        "one_batched_pass_seconds": t_batched,
        "python_loop_seconds": t_loop,
        "loop_over_batched": t_loop / t_batched,
    }
    return out


# ------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data-dir", type=Path, required=True, help="the ml-100k directory")
    ap.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}"
    )
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON to this file")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument(
        "--folds",
        default=",".join(FOLDS),
        help="rating part: comma-separated MovieLens-100k folds (default u1..u5; the cost "
        "part times the u1 models, so keep u1 first)",
    )
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        ap.error(f"--parts: unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    if "cost" in parts and "rating" not in parts:
        ap.error("--parts: cost times the u1 models of the rating part; add rating")
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"env": environment(args.threads)}
    kept: dict[str, Recommender] = {}
    for part in PARTS:
        if part not in parts:
            continue
        start = time.perf_counter()
        if part == "rating":
            partial = None if args.out is None else args.out.with_suffix(".rating_folds.json")
            folds = tuple(f.strip() for f in args.folds.split(",") if f.strip())
            result[part] = rating_section(args.data_dir, kept, partial, folds)
        elif part == "clicks":
            result[part] = clicks_section()
        elif part == "density":
            from density import density_section

            result[part] = density_section()
        else:
            result[part] = cost_section(kept)
        result[part]["wall_seconds"] = time.perf_counter() - start
        log(f"{part}: done in {result[part]['wall_seconds']:.1f}s")
    text = json.dumps(json_ready(result), indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
