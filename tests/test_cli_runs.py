"""``wager train / evaluate / recommend`` end to end through the real command line.

Three tiny runs are trained once per module (each in well under a second once torch is
warm): a click model on the synthetic world (``format = "synthetic"``, temporal split),
a ``biased_mf`` rating model and a ``two_tower`` retrieval model on a CSV table written to
a temporary directory. The tests then check exit codes, the ``--json`` payloads, the run
directory, that ``evaluate`` reproduces the train-time metrics, cold-start and batch
recommendations, and that bad inputs exit non-zero with a message naming the problem and
no traceback.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner, Result

from conftest import rating_toml
from wager.cli import app
from wager.recommender import Catalogue

RUN_FILES = (
    "config.toml",
    "weights.safetensors",
    "encoders.json",
    "catalogue.npz",
    "manifest.json",
)
RANKING_KEYS = (
    "precision@10",
    "recall@10",
    "ndcg@10",
    "map@10",
    "mrr@10",
    "hit_rate@10",
    "top_k_accuracy@1",
    "top_k_accuracy@5",
    "coverage@10",
    "diversity@10",
    "novelty@10",
    "train_seconds",
)
N_ITEMS = 25
N_LIGHT_USERS = 40
# 40 users rate 10 distinct items each; user "heavy" rates all 25, so after the split it has
# fewer than 10 unseen items and gets a short list from `recommend --all-users -k 10`
N_ROWS = N_LIGHT_USERS * 10 + N_ITEMS

SYNTHETIC_TOML = """\
seed = 0

[data]
format = "synthetic"
synthetic_rows = 3000
split = "temporal"
valid_fraction = 0.1

[model]
type = "factorization"
dim = 4

[training]
epochs = 2
batch_size = 512

[evaluation]
k = 10
top_k_accuracy = [1, 5]
"""


def _ratings() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for u in range(N_LIGHT_USERS):
        for i in rng.choice(N_ITEMS, size=10, replace=False):
            rows.append((f"u{u}", f"i{i}", int(rng.integers(1, 6))))
    rows += [("heavy", f"i{i}", int(rng.integers(1, 6))) for i in range(N_ITEMS)]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "rating"])
    df["ts"] = rng.permutation(len(df))
    return df


def _invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def _plain(text: str) -> str:
    """Output without ANSI colour codes, whitespace runs collapsed."""
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())


def _ok_json(result: Result) -> dict:
    assert result.exit_code == 0, result.output
    assert result.exception is None, result.output
    return json.loads(result.stdout)  # json reads NaN, as json.dumps writes it


def _table_toml(path: Path, model: str) -> str:
    return rating_toml(
        path,
        model=model,
        schema_extra='timestamp = "ts"\n',
        extra="[evaluation]\nk = 10\ntop_k_accuracy = [1, 5]\n",
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli_runs")
    _ratings().to_csv(d / "ratings.csv", index=False)
    (d / "synthetic.toml").write_text(SYNTHETIC_TOML)
    for model in ("biased_mf", "two_tower"):
        (d / f"{model}.toml").write_text(_table_toml(d / "ratings.csv", model))
    return d


def _train(workdir: Path, name: str) -> tuple[Path, dict]:
    run = workdir / f"run_{name}"
    payload = _ok_json(_invoke("train", workdir / f"{name}.toml", "--out", run, "--json"))
    return run, payload


@pytest.fixture(scope="module")
def synthetic_run(workdir: Path) -> tuple[Path, dict]:
    return _train(workdir, "synthetic")


@pytest.fixture(scope="module")
def mf_run(workdir: Path) -> tuple[Path, dict]:
    return _train(workdir, "biased_mf")


@pytest.fixture(scope="module")
def tower_run(workdir: Path) -> tuple[Path, dict]:
    return _train(workdir, "two_tower")


RUNS = ("synthetic_run", "mf_run", "tower_run")


def _numbers(metrics: dict) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


# ----------------------------------------------------------------------------- train


@pytest.mark.parametrize(
    ("run_name", "present", "absent"),
    [
        ("synthetic_run", ("auc", "log_loss"), ("rmse", "mae")),
        ("mf_run", ("rmse", "mae"), ("auc", "log_loss")),
        ("tower_run", (), ("rmse", "mae", "auc", "log_loss")),
    ],
)
def test_train_json_has_the_metric_keys_of_the_task(request, run_name, present, absent):
    run, payload = request.getfixturevalue(run_name)
    assert payload["ok"] is True and payload["run"] == str(run)
    for key in (*present, *RANKING_KEYS):
        assert key in payload, f"{key} missing from {sorted(payload)}"
        assert isinstance(payload[key], float), key
    for key in absent:
        assert key not in payload
    for key in present:  # the task's pointwise metrics are real numbers, never NaN
        assert math.isfinite(payload[key]), key
    for key in ("precision@10", "recall@10", "ndcg@10", "hit_rate@10", "coverage@10"):
        assert 0.0 <= payload[key] <= 1.0, key
    assert payload["epochs"] == 2


def test_train_json_row_counts_partition_the_table(mf_run, tower_run):
    for _run, payload in (mf_run, tower_run):
        # random split: round(0.2 * 425) = 85 test rows; round(0.1 * 340) = 34 validation rows
        assert (payload["n_train"], payload["n_valid"], payload["n_test"]) == (306, 34, 85)
        assert payload["n_train"] + payload["n_valid"] + payload["n_test"] == N_ROWS
        assert payload["split"] == "random"


@pytest.mark.parametrize("run_name", RUNS)
def test_run_directory_holds_every_file(request, run_name):
    run, payload = request.getfixturevalue(run_name)
    for name in (*RUN_FILES, "metrics.json"):
        assert (run / name).is_file(), name
    saved = json.loads((run / "metrics.json").read_text())
    for key, value in _numbers(payload).items():
        if key in saved:
            assert saved[key] == pytest.approx(value, rel=1e-9, nan_ok=True), key


def test_train_without_json_prints_a_table_and_the_run_path(workdir):
    run = workdir / "run_plain"
    result = _invoke("train", workdir / "biased_mf.toml", "--out", run)
    output = _plain(result.output)
    assert result.exit_code == 0, output
    assert "rmse" in output and "ndcg@10" in output
    assert f"run saved to {run}" in output
    assert (run / "weights.safetensors").is_file()


# ----------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize("run_name", RUNS)
def test_evaluate_reproduces_train_time_metrics(request, run_name):
    run, trained = request.getfixturevalue(run_name)
    again = _ok_json(_invoke("evaluate", run, "--json"))
    assert again["split"] == trained["split"]
    assert again["n_test"] == trained["n_test"]
    shared = _numbers(again).keys() & _numbers(trained).keys()
    assert {k for k in RANKING_KEYS if k in trained} <= shared
    for key in shared - {k for k in shared if k.endswith("_seconds")}:  # timings vary
        a, b = float(trained[key]), float(again[key])
        assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-6, (key, a, b)


def test_evaluate_on_another_split(mf_run):
    run, _ = mf_run
    payload = _ok_json(_invoke("evaluate", run, "--split", "temporal", "--json"))
    assert payload["split"] == "temporal"
    assert payload["n_test"] == 85  # the 85 latest of 425 distinct timestamps
    assert math.isfinite(payload["rmse"])
    # another split's plots go to their own folder, not over the ones metrics.json lists
    assert Path(payload["plots_dir"]) == Path(run) / "evaluation-temporal"
    for name in payload.get("plots", {}).values():
        assert (Path(payload["plots_dir"]) / name).is_file()
    listed = json.loads((Path(run) / "metrics.json").read_text()).get("plots", {})
    for name in listed.values():
        assert (Path(run) / name).is_file()


def test_evaluate_without_json_prints_a_table(mf_run):
    run, _ = mf_run
    result = _invoke("evaluate", run)
    output = _plain(result.output)
    assert result.exit_code == 0, output
    assert "rmse" in output and "top_k_accuracy@5" in output


def test_evaluate_without_json_says_where_the_plots_are(synthetic_run):
    run, trained = synthetic_run
    assert trained.get("plots"), "the synthetic run (an ensemble) draws uncertainty plots"
    output = _plain(_invoke("evaluate", run).output)
    assert "plots (" in output and "reliability_diagram" in output
    assert str(run) in output.replace("\n", "")


# ----------------------------------------------------------------------------- recommend


@pytest.mark.parametrize("run_name", ["mf_run", "tower_run"])
def test_recommend_unknown_user_is_cold_start_not_an_error(request, run_name):
    run, _ = request.getfixturevalue(run_name)
    payload = _ok_json(_invoke("recommend", run, "--user", "nobody", "-k", "3", "--json"))
    assert payload["cold_start_users"] == ["nobody"]
    assert len(payload["notices"]) == 1 and "'nobody'" in payload["notices"][0]
    assert "cold-start" in payload["notices"][0]
    recs = payload["recommendations"]
    assert [r["rank"] for r in recs] == [1, 2, 3]
    assert all(r["user"] == "nobody" and r["cold_start"] is True for r in recs)
    assert len({r["item"] for r in recs}) == 3
    means = [r["mean"] for r in recs]
    assert means == sorted(means, reverse=True)


def test_recommend_unknown_user_plain_output_has_notice_and_k_rows(mf_run):
    run, _ = mf_run
    result = _invoke("recommend", run, "--user", "nobody", "-k", "4")
    assert result.exit_code == 0, result.output
    assert "notice:" in _plain(result.stderr) and "'nobody'" in _plain(result.stderr)
    rows = [line for line in result.stdout.splitlines() if "nobody" in line]
    assert len(rows) == 4


def test_recommend_known_user_excludes_seen_items(mf_run):
    run, _ = mf_run
    payload = _ok_json(_invoke("recommend", run, "--user", "u1", "-k", "5", "--json"))
    assert payload["cold_start_users"] == [] and payload["notices"] == []
    seen = _seen_items(run)["u1"]
    recs = payload["recommendations"]
    assert len(recs) == 5
    assert not {r["item"] for r in recs} & seen


def _seen_items(run: Path) -> dict[str, set[str]]:
    """Each training user's seen items, read back from the run's catalogue.npz (CSR)."""
    cat = Catalogue.load(run / "catalogue.npz")
    seen = cat.seen.tocsr()
    return {
        u: {cat.items[j] for j in seen.indices[seen.indptr[r] : seen.indptr[r + 1]]}
        for r, u in enumerate(cat.users)
    }


@pytest.mark.parametrize("run_name", ["mf_run", "tower_run"])
def test_recommend_all_users_writes_one_row_per_user_and_rank(request, run_name, tmp_path):
    run, _ = request.getfixturevalue(run_name)
    out = tmp_path / "recs.parquet"
    k = 10
    result = _invoke("recommend", run, "--all-users", "-k", str(k), "--out", out, "--json")
    payload = _ok_json(result)
    assert payload["out"] == str(out) and payload["recommendations"] == []
    frame = pd.read_parquet(out)
    assert {"user", "item", "rank", "mean", "std", "low", "high", "cold_start"} <= set(frame)
    assert not frame.duplicated(["user", "rank"]).any()
    assert not frame.duplicated(["user", "item"]).any()
    assert not frame["cold_start"].any()
    seen = _seen_items(run)
    assert set(frame["user"]) == set(seen)
    assert payload["n_users"] == len(seen)
    n_catalogue = Catalogue.load(run / "catalogue.npz").n_items
    for user, group in frame.groupby("user"):
        expected = min(k, n_catalogue - len(seen[user]))
        assert sorted(group["rank"]) == list(range(1, expected + 1)), user
        assert not set(group["item"]) & seen[user], user
    # "heavy" rated every item: only its held-out ones are left (fewer than k)
    assert (frame["user"] == "heavy").sum() < k
    assert len(frame) < k * len(seen)


def test_recommend_all_users_plain_output_reports_the_file(mf_run, tmp_path):
    run, _ = mf_run
    out = tmp_path / "sub" / "recs.csv"
    result = _invoke("recommend", run, "--all-users", "-k", "2", "--out", out)
    assert result.exit_code == 0, result.output
    assert "written to" in _plain(result.output)
    frame = pd.read_csv(out)
    assert (frame.groupby("user").size() == 2).all()


# ----------------------------------------------------------------------------- bad inputs


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


BAD_INPUTS: list[tuple[str, Callable[[Path], list[str | Path]], tuple[str, ...]]] = [
    (
        "missing_config",
        lambda d: ["train", d / "nope.toml", "--out", d / "run"],
        ("nope.toml", "config file not found"),
    ),
    (
        "invalid_toml",
        lambda d: ["train", _write(d / "bad.toml", "[model\n"), "--out", d / "run"],
        ("bad.toml", "invalid TOML"),
    ),
    (
        "unknown_config_key",
        lambda d: ["train", _write(d / "c.toml", "[model]\ndims = 3\n"), "--out", d / "run"],
        ("[model] dims is not a known key", "Did you mean 'dim'?", "Allowed:"),
    ),
    (
        "unknown_config_section",
        lambda d: ["train", _write(d / "c.toml", "[modle]\ndim = 3\n"), "--out", d / "run"],
        ("[modle] is not a known section", "Did you mean '[model]'"),
    ),
    (
        "invalid_config_value",
        lambda d: ["train", _write(d / "c.toml", "[model]\ndim = 0\n"), "--out", d / "run"],
        ("[model] dim = 0",),
    ),
    (
        "config_is_a_directory",
        lambda d: ["train", d, "--out", d / "run"],
        (" is a directory",),
    ),
    (
        "unknown_split",
        lambda d: [
            "train",
            _write(d / "c.toml", _table_toml(d / "r.csv", "biased_mf")),
            "--split",
            "bogus",
            "--out",
            d / "run",
        ],
        ("split 'bogus' is not known", "random, temporal, leave-last-out"),
    ),
    (
        "missing_data_path",
        lambda d: [
            "train",
            _write(d / "c.toml", '[data]\nformat = "table"\n'),
            "--out",
            d / "run",
        ],
        ("[data] path is not set", "--data-dir"),
    ),
    (
        "evaluate_missing_run",
        lambda d: ["evaluate", d / "no_run"],
        ("no_run", "run folder not found"),
    ),
    (
        "evaluate_not_a_run",
        lambda d: ["evaluate", d],
        ("no manifest.json", "not a wager run"),
    ),
    (
        "recommend_missing_run",
        lambda d: ["recommend", d / "no_run", "--user", "u1"],
        ("no_run", "run folder not found"),
    ),
    (
        "recommend_without_users",
        lambda d: ["recommend", d / "no_run"],
        ("--user", "--all-users"),
    ),
    (
        "recommend_k_zero",
        lambda d: ["recommend", d / "no_run", "--user", "u1", "-k", "0"],
        ("-k must be >= 1, got 0",),
    ),
]


@pytest.mark.parametrize(
    ("build", "fragments"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_inputs_exit_non_zero_naming_the_problem(tmp_path, build, fragments):
    _ratings().head(60).to_csv(tmp_path / "r.csv", index=False)
    result = _invoke(*build(tmp_path))
    output = _plain(result.output)
    assert result.exit_code != 0, output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in output, f"{fragment!r} not in output:\n{output}"
    assert not (tmp_path / "run").exists()


def test_bad_input_with_json_prints_an_error_object(tmp_path):
    cfg = _write(tmp_path / "c.toml", "[model]\ndims = 3\n")
    result = _invoke("train", cfg, "--out", tmp_path / "run", "--json")
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert payload["ok"] is False
    assert "[model] dims is not a known key" in payload["error"]["message"]
    assert payload["error"]["path"] == str(cfg)


def test_unknown_split_with_json_lists_choices_and_suggests(tmp_path):
    _ratings().to_csv(tmp_path / "r.csv", index=False)
    cfg = _write(tmp_path / "c.toml", _table_toml(tmp_path / "r.csv", "biased_mf"))
    result = _invoke("train", cfg, "--split", "tempral", "--out", tmp_path / "run", "--json")
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert "random, temporal, leave-last-out" in error["message"]
    assert "Did you mean 'temporal'?" in error["message"]
    assert [f["code"] for f in error["findings"]] == ["unknown_split"]


def test_evaluate_unknown_split_lists_choices(mf_run):
    run, _ = mf_run
    result = _invoke("evaluate", run, "--split", "u9")
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "split 'u9' is not known" in _plain(result.output)
    assert "random, temporal, leave-last-out" in _plain(result.output)


def test_json_output_is_strict_json_with_null_for_nan(capsys):
    import json as _json

    import numpy as _np

    from wager.cli import print_json

    print_json(
        {
            "a": float("nan"),
            "b": [1.0, float("inf"), _np.float32("nan")],
            "c": _np.array([0.5, _np.nan]),
            "d": {"e": -float("inf"), "f": 2},
        }
    )
    out = capsys.readouterr().out
    assert "NaN" not in out and "Infinity" not in out
    parsed = _json.loads(out, parse_constant=lambda c: pytest.fail(f"non-strict constant {c}"))
    assert parsed == {"a": None, "b": [1.0, None, None], "c": [0.5, None], "d": {"e": None, "f": 2}}
