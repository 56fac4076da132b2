"""Config dataclasses: TOML round trip and validation messages naming the field."""

from __future__ import annotations

import dataclasses
import time
import tomllib
from pathlib import Path

import pytest

from wager.config import (
    ConfigError,
    DataConfig,
    EnsembleConfig,
    EvaluationConfig,
    ModelConfig,
    RunConfig,
    TaskConfig,
    TrainConfig,
    UncertaintyConfig,
    available_devices,
    dumps_toml,
)
from wager.data.schema import Categorical, MultiCategorical, Numeric, Schema, Text
from wager.models.registry import MODEL_TYPES

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


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
        (lambda: RunConfig.from_dict({"modle": {}}), "[modle] is not a known section"),
        (lambda: RunConfig.from_dict({"model": {"dims": 3}}), "[model] dims is not a known key"),
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
            duplicates="mean",
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
            mean_loss="mse",
            components=4,
            cross_layers=2,
            low_rank=4,
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
        (lambda: ModelConfig(type="two_tower", user_dropout=1.0), "[model] user_dropout = 1.0"),
        (lambda: ModelConfig(type="two_tower", user_dropout=-0.1), "[model] user_dropout = -0.1"),
        (lambda: ModelConfig(oov_rate=1.0), "[model] oov_rate = 1.0"),
        (lambda: ModelConfig(type="svd"), "[model] type = 'svd'"),
        (lambda: ModelConfig(type="neumf", negatives=0), "[model] negatives = 0"),
        (lambda: ModelConfig(type="dcn", low_rank=0), "[model] low_rank = 0"),
        (lambda: ModelConfig(type="dcn", hidden=(8, 0)), "[model] hidden = (8, 0)"),
        (
            lambda: ModelConfig(type="two_tower", hard_negatives=-1),
            "[model] hard_negatives = -1",
        ),
        (
            lambda: ModelConfig(type="two_tower", in_batch_negatives=False),
            "[model] in_batch_negatives = false",
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
        ("[data]\nsplitt = 'random'\n", "[data] splitt is not a known key"),
    ],
)
def test_invalid_values_in_a_toml_file_name_the_field(tmp_path, toml, fragment):
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ValueError) as exc:
        RunConfig.load(path)
    assert fragment in str(exc.value)


# ----------------------------------------------------------------------------- checked on read
# Each bad TOML text with one problem line that its load must report (after "<file>: ").
# The TOML values are written as a user writes them; the message shows the value read.
BAD_TOML = [
    # an integer field given a string, a float, a boolean
    (
        '[training]\nepochs = "2"\n',
        "[training] epochs = '2' is invalid: must be an integer (write 2 without quotes)",
    ),
    ("[training]\nepochs = 2.7\n", "[training] epochs = 2.7 is invalid: must be an integer"),
    ("[model]\ndim = true\n", "[model] dim = true is invalid: must be an integer"),
    (
        "[evaluation]\nmax_users = 1.5\n",
        "[evaluation] max_users = 1.5 is invalid: must be an integer or unset (leave the key out)",
    ),
    (
        'seed = "7"\n',
        "seed = '7' is invalid: must be an integer or unset (leave the key out) (write 7 without "
        "quotes)",
    ),
    # a float field given a boolean, a string, a non-finite number
    (
        "[training]\nlearning_rate = true\n",
        "[training] learning_rate = true is invalid: must be a finite number",
    ),
    (
        '[data]\ntest_fraction = "0.2"\n',
        "[data] test_fraction = '0.2' is invalid: must be a finite number (write 0.2 without "
        "quotes)",
    ),
    (
        "[training]\nlearning_rate = nan\n",
        "[training] learning_rate = nan is invalid: must be a finite number",
    ),
    (
        "[model]\ntype = 'biased_mf'\nreg = inf\n",
        "[model] reg = inf is invalid: must be a finite number",
    ),
    (
        '[training]\ngrad_clip = "1"\n',
        "[training] grad_clip = '1' is invalid: must be a finite number or unset (leave the key "
        "out) (write 1 without quotes)",
    ),
    # a boolean field given a string or an integer
    (
        '[training]\nmixed_precision = "true"\n',
        "[training] mixed_precision = 'true' is invalid: must be true or false (write true "
        "without quotes)",
    ),
    ("[ensemble]\nbootstrap = 1\n", "[ensemble] bootstrap = 1 is invalid: must be true or false"),
    # lists
    (
        '[model]\ntype = "dcn"\nhidden = 64\n',
        "[model] hidden = 64 is invalid: must be a list of integers",
    ),
    (
        '[model]\ntype = "dcn"\nhidden = [64, 2.5]\n',
        "[model] hidden = [64, 2.5] is invalid: must be a list of integers",
    ),
    (
        '[data]\ndrop_features = "zip"\n',
        "[data] drop_features = 'zip' is invalid: must be a list of strings",
    ),
    (
        '[uncertainty]\nconfidence_levels = [0.9, "0.95"]\n',
        "[uncertainty] confidence_levels = [0.9, '0.95'] is invalid: must be a list of finite "
        "numbers",
    ),
    # strings
    (
        "[data]\npath = 5\n",
        "[data] path = 5 is invalid: must be a string or unset (leave the key out)",
    ),
    # unknown sections and keys, with a suggestion
    (
        "[modle]\ndim = 3\n",
        "[modle] is not a known section. Did you mean '[model]' or '[ensemble]'? Sections: "
        "[schema], [data], [model], [training], [ensemble], [evaluation], [uncertainty]",
    ),
    (
        "sed = 3\n",
        "sed is not a known key. Did you mean 'seed'? Allowed: schema, data, model, training, "
        "ensemble, evaluation, uncertainty, seed",
    ),
    (
        "[training]\nepoch = 3\n",
        "[training] epoch is not a known key. Did you mean 'epochs'? Allowed: epochs, "
        "batch_size, learning_rate, weight_decay, anchored, optimizer, patience, grad_clip, "
        "device, lr_schedule, warmup_steps, mixed_precision, validation_metric",
    ),
    (
        "[evaluation]\nseed = 3\n",
        "[evaluation] seed is not a known key. 'seed' is a top-level key: write it above the "
        "first [section]. Allowed: k, top_k_accuracy, relevance_threshold, max_users",
    ),
    (
        "[ensemble]\nmember = 3\n",
        "[ensemble] member is not a known key. Did you mean 'members' or 'member_threads'? "
        "Allowed: members, bootstrap, holdout, fit, member_threads",
    ),
    (
        "[uncertainty]\ncalibrate = 'platt'\n",
        "[uncertainty] calibrate is not a known key. Did you mean 'calibrator'?",
    ),
    (
        '[schema]\nusr = "u"\n',
        "[schema] usr is not a known key. Did you mean 'user'? Allowed: user, item, label, "
        "label_kind, rating_range, weight, impressions, clicks, timestamp, propensity, context, "
        "user_features, item_features",
    ),
    (
        '[[schema.user_features]]\nname = "g"\ntype = "categorical"\nmin_cont = 2\n',
        "[[schema.user_features]] #1 ('g') min_cont is not a known key. Did you mean "
        "'min_count'? Allowed: name, min_count",
    ),
    (
        '[[schema.item_features]]\nname = "t"\ntype = "text"\nbuckets = 8\n',
        "[[schema.item_features]] #1 ('t') buckets is not a known key. Did you mean 'n_buckets'? "
        "Allowed: name, n_buckets, ngram_max, max_tokens",
    ),
    # the schema's values and feature tables
    (
        '[schema]\nlabel_kind = "stars"\n',
        "[schema] label_kind = 'stars' is invalid: must be one of 'rating', 'click', 'ctr'",
    ),
    (
        '[schema]\nrating_range = [1, "5"]\n',
        "[schema] rating_range = [1, '5'] is invalid: must be a list of 2 finite numbers or "
        "unset (leave the key out)",
    ),
    ("[schema]\nuser = 3\n", "[schema] user = 3 is invalid: must be a string"),
    (
        '[[schema.context]]\nname = "pos"\ntype = "numerc"\n',
        "[[schema.context]] #1 ('pos') type = 'numerc' is invalid: must be one of 'categorical', "
        "'numeric', 'multi_categorical', 'text', 'vector'; did you mean 'numeric'?",
    ),
    (
        '[[schema.context]]\nname = "pos"\n',
        "[[schema.context]] #1 ('pos') needs type = one of 'categorical', 'numeric', "
        "'multi_categorical', 'text'",
    ),
    (
        '[[schema.context]]\ntype = "categorical"\n',
        "[[schema.context]] #1 needs name = the column name",
    ),
    (
        '[[schema.item_features]]\nname = "y"\ntype = "numeric"\nbins = 2.5\n',
        "[[schema.item_features]] #1 ('y') bins = 2.5 is invalid: must be an integer or a list "
        "of finite numbers",
    ),
    (
        '[[schema.user_features]]\nname = "g"\ntype = "categorical"\nmin_count = "2"\n',
        "[[schema.user_features]] #1 ('g') min_count = '2' is invalid: must be an integer (write "
        "2 without quotes)",
    ),
    (
        '[schema]\nuser_features = "age"\n',
        "[schema] user_features = 'age' is invalid: must be a list of feature tables "
        "([[schema.user_features]])",
    ),
    (
        "model = 3\n",
        "model = 3 is invalid: must be a table ([model] on its own line, then its keys)",
    ),
    # choices outside their allowed values
    (
        '[uncertainty]\ncalibrator = "plat"\n',
        "[uncertainty] calibrator = 'plat' is invalid: must be one of 'none', 'platt', "
        "'isotonic', 'temperature'; did you mean 'platt'?",
    ),
    (
        '[uncertainty]\nconformal = "cqr"\n',
        "[uncertainty] conformal = 'cqr' is invalid: must be one of 'none', 'normalized', "
        "'homoscedastic'",
    ),
    (
        '[uncertainty]\ncold_start = "prior"\n',
        "[uncertainty] cold_start = 'prior' is invalid: must be one of 'learned', 'population'",
    ),
    (
        '[data]\nformat = "csv"\n',
        "[data] format = 'csv' is invalid: must be one of 'auto', 'movielens', 'obd', 'table', "
        "'ctr', 'synthetic'",
    ),
    (
        '[data]\nsplit = "tempral"\n',
        "[data] split = 'tempral' is invalid: must be 'random', 'temporal', 'leave-last-out' or "
        "a predefined fold such as 'u1'; did you mean 'temporal'?",
    ),
    (
        '[model]\ntype = "svd"\n',
        "[model] type = 'svd' is invalid: must be one of 'factorization', 'biased_mf', "
        "'two_tower', 'neumf', 'dcn', 'als'",
    ),
    (
        '[model]\ntype = "twotower"\n',
        "[model] type = 'twotower' is invalid: must be one of 'factorization', 'biased_mf', "
        "'two_tower', 'neumf', 'dcn', 'als'; did you mean 'two_tower'?",
    ),
    (
        '[model]\ntype = "dcn"\nlikelihood = "beta"\n',
        "[model] likelihood = 'beta' is invalid: must be one of 'point', 'gaussian', 'mdn', 'ddn'",
    ),
    (
        '[model]\ntype = "dcn"\nmean_loss = "mae"\n',
        "[model] mean_loss = 'mae' is invalid: must be one of 'nll', 'mse'",
    ),
    (
        '[model]\ntype = "two_tower"\nloss_reduction = "avg"\n',
        "[model] loss_reduction = 'avg' is invalid: must be one of 'mean', 'sum'",
    ),
    (
        '[training]\noptimizer = "adm"\n',
        "[training] optimizer = 'adm' is invalid: must be one of 'adamw', 'adam', 'adagrad'; did "
        "you mean 'adam' or 'adamw'?",
    ),
    (
        '[training]\nlr_schedule = "step"\n',
        "[training] lr_schedule = 'step' is invalid: must be one of 'constant', 'cosine', 'linear'",
    ),
    (
        '[training]\ndevice = "tpu"\n',
        "[training] device = 'tpu' is invalid: must be 'cpu', 'cuda', 'cuda:N' (N a GPU index), "
        "'mps' or 'auto' (cuda when available)",
    ),
    (
        '[training]\ndevice = "cuda:x"\n',
        "[training] device = 'cuda:x' is invalid: must be 'cpu', 'cuda', 'cuda:N' (N a GPU "
        "index), 'mps' or 'auto' (cuda when available)",
    ),
    # settings the model type does not read
    (
        '[model]\ntype = "biased_mf"\ncross_layers = 2\n',
        "[model] cross_layers = 2 is not used by type = 'biased_mf': remove it, or choose a type "
        "that reads it ('dcn')",
    ),
    (
        '[model]\ntype = "biased_mf"\ncross_layers = 3\n',
        "[model] cross_layers = 3 is not used by type = 'biased_mf': remove it, or choose a type "
        "that reads it ('dcn')",
    ),
    (
        '[model]\ntype = "factorization"\nhidden = [8]\n',
        "[model] hidden = (8,) is not used by type = 'factorization': remove it, or choose a "
        "type that reads it ('two_tower', 'neumf', 'dcn')",
    ),
    (
        '[model]\ntype = "factorization"\nlikelihood = "gaussian"\n',
        "[model] likelihood = 'gaussian' is not used by type = 'factorization': remove it, or "
        "choose a type that reads it ('biased_mf', 'dcn')",
    ),
    (
        '[model]\ntype = "two_tower"\noov_rate = 0.1\n',
        "[model] oov_rate = 0.1 is not used by type = 'two_tower': remove it, or choose a type "
        "that reads it ('factorization', 'biased_mf', 'dcn')",
    ),
    (
        '[model]\ntype = "neumf"\nnegatives = 4\ntemperature = 0.1\n',
        "[model] temperature = 0.1 is not used by type = 'neumf': remove it, or choose a type "
        "that reads it ('two_tower')",
    ),
    (
        "[model]\ncomponents = 4\n",
        "[model] components = 4 is not used by type = 'factorization': remove it, or choose a "
        "type that reads it ('dcn')",
    ),
    # a rule within [model]
    (
        '[model]\ntype = "biased_mf"\nlikelihood = "mdn"\n',
        "[model] likelihood = 'mdn' is invalid: must be 'point' or 'gaussian' for type = "
        "'biased_mf': the mixture density heads ('mdn', 'ddn') model a CTR with the DCN ranker "
        "([model] type = 'dcn')",
    ),
    # a range, after the types are right
    ("[ensemble]\nmembers = 1\n", "[ensemble] members = 1 is invalid: must be an integer >= 2"),
    # a device this machine does not have
    (
        '[training]\ndevice = "cuda:99"\n',
        "[training] device = 'cuda:99' is invalid: must be a device present on this machine: one "
        "of " + ", ".join(repr(d) for d in available_devices()),
    ),
]


def _problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        RunConfig.load(path)
    prefix = f"{path}: "
    assert all(line.startswith(prefix) for line in exc.value.problems), exc.value.problems
    assert str(exc.value) == "\n".join(exc.value.problems)
    return [line.removeprefix(prefix) for line in exc.value.problems]


@pytest.mark.parametrize(("text", "line"), BAD_TOML, ids=[f"bad{i}" for i in range(len(BAD_TOML))])
def test_every_config_mistake_is_one_line_naming_section_key_value_and_what_is_allowed(
    tmp_path, text, line
):
    problems = _problems(tmp_path, text)
    assert len(problems) == 1, problems
    assert problems[0].startswith(line), problems
    assert all("\n" not in p for p in problems)


@pytest.mark.skipif("cuda" in available_devices(), reason="this machine has CUDA")
def test_cuda_without_cuda_names_what_is_available(tmp_path):
    assert _problems(tmp_path, '[training]\ndevice = "cuda"\n') == [
        "[training] device = 'cuda' is invalid: must be a device present on this machine: one "
        "of " + ", ".join(repr(d) for d in available_devices())
    ]


@pytest.mark.skipif("mps" in available_devices(), reason="this machine has MPS")
def test_mps_without_mps_is_an_error(tmp_path):
    (line,) = _problems(tmp_path, '[training]\ndevice = "mps"\n')
    assert line.startswith("[training] device = 'mps' is invalid: must be a device present")


def test_cpu_and_auto_are_always_available():
    assert available_devices()[:2] == ("cpu", "auto")
    assert TrainConfig(device="auto").device == "auto"  # an explicit choice, kept as written


def test_every_mistake_of_a_file_is_listed_at_once(tmp_path):
    text = (
        'seed = "1"\n[data]\nformat = "csv"\nsplitt = "random"\n'
        '[model]\ntype = "biased_mf"\ndim = 2.5\ncross_layers = 2\n'
        '[training]\nepochs = 0\noptimizer = "sgd"\n'
    )
    problems = _problems(tmp_path, text)
    assert [p.split(" is ")[0] for p in problems] == [
        "seed = '1'",
        "[data] splitt",
        "[data] format = 'csv'",
        "[model] dim = 2.5",
        "[model] cross_layers = 2",
        "[training] optimizer = 'sgd'",
        # a range: checked on the section without its mistyped keys
        "[training] epochs = 0",
    ]
    assert problems[-1] == "[training] epochs = 0 is invalid: must be an integer >= 1"


def test_a_bad_config_fails_before_any_data_is_read(tmp_path):
    # the data path does not exist: had the data been looked at, the error would name it
    path = tmp_path / "bad.toml"
    path.write_text('[data]\npath = "no/such/folder"\n[training]\nepochs = "2"\n')
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"\[training\] epochs = '2' is invalid") as exc:
        RunConfig.load(path)
    assert time.perf_counter() - start < 0.5
    assert "no/such/folder" not in str(exc.value)


def test_the_cli_reports_a_config_mistake_before_touching_data_or_output(tmp_path):
    from typer.testing import CliRunner

    from wager.cli import app

    path = tmp_path / "bad.toml"
    path.write_text('[model]\ntype = "biased_mf"\ncross_layers = 2\n')
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["train", str(path), "--data-dir", str(tmp_path / "missing"), "--out", str(out)]
    )
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "[model] cross_layers = 2 is not used by type = 'biased_mf'" in text
    assert "missing" not in text.replace(str(path), "")
    assert not out.exists()


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_every_example_config_loads(path):
    cfg = RunConfig.load(path)
    assert cfg.model.type in MODEL_TYPES


# ----------------------------------------------------------------------------- built in Python
@pytest.mark.parametrize(
    ("build", "line"),
    [
        (lambda: TrainConfig(epochs="2"), "[training] epochs = '2' is invalid: must be an integer"),
        (lambda: TrainConfig(epochs=2.7), "[training] epochs = 2.7 is invalid: must be an integer"),
        (lambda: ModelConfig(dim=True), "[model] dim = true is invalid: must be an integer"),
        (
            lambda: TrainConfig(learning_rate=float("inf")),
            "[training] learning_rate = inf is invalid: must be a finite number",
        ),
        (lambda: EnsembleConfig(bootstrap=1), "[ensemble] bootstrap = 1 is invalid: must be true"),
        (
            lambda: ModelConfig(type="dcn", hidden=(8, 2.5)),
            "[model] hidden = (8, 2.5) is invalid: must be a list of integers",
        ),
        (
            lambda: EvaluationConfig(top_k_accuracy=(1, True)),
            "[evaluation] top_k_accuracy = (1, True) is invalid: must be a list of integers",
        ),
        (
            lambda: ModelConfig(type="biased_mf", cross_layers=2),
            "[model] cross_layers = 2 is not used by type = 'biased_mf'",
        ),
        (
            lambda: ModelConfig(type="two_tower", likelihood="gaussian"),
            "[model] likelihood = 'gaussian' is not used by type = 'two_tower'",
        ),
        (lambda: RunConfig(seed=1.0), "seed = 1.0 is invalid: must be an integer or unset"),
        (
            lambda: RunConfig(model={"dim": 3}),
            "model = {'dim': 3} is invalid: must be a ModelConfig",
        ),
        (
            lambda: RunConfig(schema=Schema(user=3)),
            "[schema] user = 3 is invalid: must be a string",
        ),
        (
            lambda: RunConfig(schema=Schema(user_features=(Text("t", n_buckets=8.0),))),
            "[[schema.user_features]] #1 ('t') n_buckets = 8.0 is invalid: must be an integer",
        ),
    ],
)
def test_python_built_configs_are_checked_the_same_way(build, line):
    with pytest.raises(ConfigError) as exc:
        build()
    assert exc.value.problems[0].startswith(line), exc.value.problems


def test_numbers_and_lists_are_converted_to_the_annotated_types():
    cfg = TrainConfig(learning_rate=1, grad_clip=2)
    assert cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float)
    assert isinstance(cfg.grad_clip, float)
    model = ModelConfig(type="dcn", hidden=[8, 4])
    assert model.hidden == (8, 4)
    unc = UncertaintyConfig(confidence_levels=[0.5, 1 / 2 + 0.4])
    assert unc.confidence_levels == (0.5, 0.9)
    # a setting another type reads may be passed at its default value
    assert ModelConfig(type="biased_mf", cross_layers=3).cross_layers == 3


# ----------------------------------------------------------------------------- round trips
# A non-default value for every [model] setting; each model type round-trips with all the
# settings it reads set to these.
NON_DEFAULT = {
    "dim": 8,
    "init_std": 0.01,
    "user_min_count": 2,
    "item_min_count": 3,
    "hidden": (16, 8),
    "dropout": 0.25,
    "likelihood": "gaussian",
    "mean_loss": "mse",
    "reg": 1e-4,
    "bias_reg": 1e-3,
    "temperature": 0.05,
    "logq_correction": False,
    "remove_accidental_hits": False,
    "item_bias": True,
    "user_dropout": 0.1,
    "in_batch_negatives": False,
    "full_softmax": True,
    "full_softmax_max_items": 500,
    "negatives": 4,
    "negative_sampling": "popularity",
    "negative_power": 0.5,
    "loss_reduction": "sum",
    "normalize": True,
    "components": 4,
    "cross_layers": 2,
    "low_rank": 4,
    "positive_threshold": 3.5,
    "oov_rate": 0.05,
    "hard_negatives": 5,
    "alpha": 40.0,
    "cg_steps": 0,
    "reg_exponent": 0.5,
    "tasks": (
        TaskConfig("rating", "rating", likelihood="gaussian"),
        TaskConfig("like", "rating", kind="click", weight=0.5, threshold=4.0),
    ),
}


def test_non_default_table_covers_every_model_setting():
    names = {f.name for f in dataclasses.fields(ModelConfig)} - {"type"}
    assert set(NON_DEFAULT) == names
    assert all(getattr(ModelConfig(), k) != v for k, v in NON_DEFAULT.items())


@pytest.mark.parametrize("kind", sorted(MODEL_TYPES))
def test_every_model_type_round_trips_with_every_setting_it_reads(tmp_path, kind):
    settings = MODEL_TYPES[kind].settings
    model = ModelConfig(type=kind, **{k: v for k, v in NON_DEFAULT.items() if k in settings})
    cfg = RunConfig(model=model)
    cfg.save(tmp_path / "run.toml")
    assert RunConfig.load(tmp_path / "run.toml") == cfg
    # the file names only what the type reads, so it loads back without an unused setting
    written = tomllib.loads((tmp_path / "run.toml").read_text())["model"]
    assert set(written) == settings - {k for k in settings if getattr(model, k) is None}


SECTIONS = [
    DataConfig(
        path="d.csv",
        format="table",
        split="u1",
        test_fraction=0.3,
        valid_fraction=0.2,
        user_features=False,
        item_features=False,
        drop_features=("a",),
        synthetic_rows=2000,
        duplicates="last",
        synthetic_users=500,
        stream=True,
        memory_budget_mb=64,
        shuffle_buffer=10,
        stream_sample_rows=7,
    ),
    TrainConfig(
        epochs=2,
        batch_size=8,
        learning_rate=0.5,
        weight_decay=0.1,
        anchored=True,
        optimizer="adagrad",
        patience=4,
        grad_clip=1.0,
        device="cpu",
        lr_schedule="linear",
        warmup_steps=3,
        mixed_precision=True,
        validation_metric="recall@5",
    ),
    EnsembleConfig(members=3, bootstrap=False, holdout=0.2, fit="separate", member_threads=2),
    EvaluationConfig(k=3, top_k_accuracy=(2,), relevance_threshold=1.0, max_users=9),
    UncertaintyConfig(
        mc_dropout_samples=4,
        calibrator="temperature",
        conformal="homoscedastic",
        local_variance=True,
        cold_start="population",
        population_draws=3,
        confidence_levels=(0.7,),
        plots=False,
    ),
]


@pytest.mark.parametrize("section", SECTIONS, ids=lambda s: type(s).__name__)
def test_every_config_dataclass_round_trips_with_every_field_changed(tmp_path, section):
    default = type(section)()
    changed = [
        f.name
        for f in dataclasses.fields(section)
        if getattr(section, f.name) != getattr(default, f.name)
    ]
    # left at their defaults: the device (present on every machine) and variance_scaling
    # (which local_variance = true excludes)
    kept = {"device", "variance_scaling"}
    assert changed == [f.name for f in dataclasses.fields(section) if f.name not in kept]
    name = {
        DataConfig: "data",
        TrainConfig: "training",
        EnsembleConfig: "ensemble",
        EvaluationConfig: "evaluation",
        UncertaintyConfig: "uncertainty",
    }[type(section)]
    cfg = RunConfig(**{name: section})
    cfg.save(tmp_path / "run.toml")
    assert getattr(RunConfig.load(tmp_path / "run.toml"), name) == section


def test_load_can_replace_the_device(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[training]\ndevice = "cuda:99"\nepochs = 3\n')
    cfg = RunConfig.load(path, device="cpu")
    assert cfg.training.device == "cpu" and cfg.training.epochs == 3


def test_a_config_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('[data]\npath = "donn\xe9es"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.toml: not a UTF-8 text file"):
        RunConfig.load(path)
