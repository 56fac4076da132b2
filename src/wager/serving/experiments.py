"""A/B experiments of the service: the experiment config (arms with their traffic shares,
model version and policy), sticky assignment of users to arms by hashing, and the report
``wager abtest report`` prints from the event store.

Config (TOML)::

    [experiment]
    name = "ucb-vs-greedy"       # letters, digits, '-', '_' and '.'
    salt = "2026-12"             # change it to reshuffle users in a new experiment
    [[experiment.arms]]
    name = "control"
    share = 0.5
    policy = "greedy"
    [[experiment.arms]]
    name = "ucb"
    share = 0.5
    policy = "ucb"
    beta = 1.0
    model_version = "v2"         # optional: the active version when left out

Assignment: ``u = int(sha256(f"{salt}:{user_id}")[:8]) / 2**64`` falls in one arm's slice of
[0, 1) (arms in config order, slices as wide as their shares), so a user always gets the same
arm, and users are split independently of their ids. The event store logs each impression's
arm as ``"{experiment}/{arm}"``.
"""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wager.evaluation.abtest import (
    arm_result,
    compare_ratio_delta,
    compare_two_proportions,
    sample_ratio_mismatch,
    wilson_interval,
)
from wager.policies import policy_from_name

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_ARM_KEYS = {"name", "share", "policy", "model_version", "beta", "epsilon"}
#: the policies the service serves (POST /v1/recommend)
SERVED_POLICIES = ("greedy", "ucb", "thompson", "epsilon_greedy")


@dataclass(frozen=True)
class Arm:
    """One arm: who serves it (model version, policy) and its share of the users.

    Attributes:
        name: the arm's name (unique in its experiment).
        share: fraction of users assigned to it, in (0, 1].
        policy: a policy name of :func:`wager.policies.policy_from_name`.
        params: the policy's parameters, e.g. {"beta": 1.0}.
        model_version: the registry version it serves, or None for the active one.
    """

    name: str
    share: float
    policy: str
    params: Mapping[str, float]
    model_version: str | None


@dataclass(frozen=True)
class Experiment:
    """A named experiment: its salt and its arms (shares summing to 1)."""

    name: str
    salt: str
    arms: tuple[Arm, ...]

    @classmethod
    def load(cls, path: str | Path) -> Experiment:
        """Read and check an experiment TOML (errors name the file, the arm and the key)."""
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{path}: experiment file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: not valid TOML: {exc}") from None
        return cls.from_dict(raw, str(path))

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "experiment") -> Experiment:
        """The experiment of a parsed TOML document (``source`` is named in errors)."""
        exp = raw.get("experiment")
        if not isinstance(exp, Mapping):
            raise ValueError(f"{source}: needs an [experiment] table with name, salt and arms")
        name, salt = exp.get("name"), exp.get("salt")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(
                f"{source}: [experiment] name must be letters, digits, '-', '_' or '.', "
                f"got {name!r}"
            )
        if not isinstance(salt, str) or not salt:
            raise ValueError(f"{source}: [experiment] salt must be a non-empty string")
        arms_raw = exp.get("arms")
        if not isinstance(arms_raw, list) or len(arms_raw) < 2:
            raise ValueError(f"{source}: [[experiment.arms]] needs at least 2 arms")
        arms = tuple(_arm(a, f"{source}: arm {i + 1}") for i, a in enumerate(arms_raw))
        names = [a.name for a in arms]
        if len(set(names)) != len(names):
            raise ValueError(f"{source}: arm names must be unique, got {names}")
        total = sum(a.share for a in arms)
        if not math.isclose(total, 1.0, abs_tol=1e-9):
            shares = ", ".join(f"{a.name}={a.share:g}" for a in arms)
            raise ValueError(f"{source}: arm shares must sum to 1, got {total:g} ({shares})")
        return cls(name=name, salt=salt, arms=arms)

    def assign(self, user_id: str) -> Arm:
        """The arm of ``user_id`` (the same one on every call)."""
        digest = hashlib.sha256(f"{self.salt}:{user_id}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2.0**64
        edge = 0.0
        for arm in self.arms:
            edge += arm.share
            if u < edge:
                return arm
        return self.arms[-1]  # u within rounding of 1

    def label(self, arm: Arm) -> str:
        """The arm as the event store logs it: "experiment/arm"."""
        return f"{self.name}/{arm.name}"


def _arm(raw: object, where: str) -> Arm:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: must be a table with name, share and policy")
    unknown = sorted(set(raw) - _ARM_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed: {sorted(_ARM_KEYS)}")
    name, share, policy = raw.get("name"), raw.get("share"), raw.get("policy", "greedy")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{where}: name must be letters, digits, '-', '_' or '.', got {name!r}")
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
        raise ValueError(f"{where} ({name}): share must be a number in (0, 1], got {share!r}")
    if policy not in SERVED_POLICIES:
        raise ValueError(
            f"{where} ({name}): unknown policy {policy!r}; choose one of "
            f"{', '.join(SERVED_POLICIES)}"
        )
    params = {k: float(raw[k]) for k in ("beta", "epsilon") if k in raw}
    try:
        policy_from_name(policy, **params)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ValueError(f"{where} ({name}): {exc}") from None
    version = raw.get("model_version")
    if version is not None and not isinstance(version, str):
        raise ValueError(f"{where} ({name}): model_version must be a string, got {version!r}")
    return Arm(name, float(share), policy, params, version)


def abtest_report(
    served: pd.DataFrame,
    experiment: str,
    *,
    control: str | None = None,
    shares: Mapping[str, float] | None = None,
    level: float = 0.95,
) -> dict[str, Any]:
    """Per-arm CTRs and each arm against the control, from the event store's impressions.

    Args:
        served: ``EventStore.served_with_feedback()`` rows (arm, user_id, click, ...);
            an impression without feedback counts as not clicked.
        experiment: the experiment's name (arms logged as "experiment/arm").
        control: the control arm (default "control" when an arm has that name, else the
            first arm by name).
        shares: configured user share per arm, for the sample-ratio check on assigned
            users (None: the check is skipped).
        level: confidence level of the intervals.

    Returns:
        JSON-ready dict: experiment, level, arms (impressions, users, clicks, ctr, low, high,
        and calibration: per slot, "all" positions and "top" (rank 1), the mean predicted
        CTR of the served impressions next to the observed CTR, its interval and whether
        the prediction lies inside; see :func:`_calibration`),
        comparisons (per treatment arm: the impression-level two-proportion test and the
        user-level delta-method test, which is the valid one when users, not requests, are
        randomised), and sample_ratio (chi-square, p-value, mismatch) or None.

    Raises:
        ValueError: no impression of the experiment, or an unknown control arm.
    """
    prefix = f"{experiment}/"
    rows = served[served["arm"].astype(str).str.startswith(prefix)]
    if rows.empty:
        known = sorted({a.split("/")[0] for a in served["arm"].astype(str) if "/" in a})
        raise ValueError(
            f"no impression of experiment {experiment!r} in the event store; experiments "
            f"with impressions: {known or 'none'}"
        )
    clicks = rows["click"].fillna(0).clip(0, 1).astype(np.int64)
    frame = pd.DataFrame(
        {"arm": rows["arm"].str.slice(len(prefix)), "user": rows["user_id"], "click": clicks}
    )
    calibration = _calibration(frame, rows, level)
    per_user = frame.groupby(["arm", "user"]).agg(clicks=("click", "sum"), n=("click", "size"))
    names = sorted(frame["arm"].unique())
    control = control or ("control" if "control" in names else names[0])
    if control not in names:
        raise ValueError(f"control arm {control!r} has no impressions; arms: {names}")
    arms = {}
    for name in names:
        u = per_user.loc[name]
        arms[name] = {
            **vars(arm_result(name, int(u["clicks"].sum()), int(u["n"].sum()), level)),
            "users": len(u),
            "calibration": calibration[name],
        }
    comparisons = {}
    c = per_user.loc[control]
    for name in (n for n in names if n != control):
        t = per_user.loc[name]
        imp = compare_two_proportions(
            (int(c["clicks"].sum()), int(c["n"].sum())),
            (int(t["clicks"].sum()), int(t["n"].sum())),
            level,
            (control, name),
        )
        users = compare_ratio_delta(
            (c["clicks"].to_numpy(), c["n"].to_numpy()),
            (t["clicks"].to_numpy(), t["n"].to_numpy()),
            level,
        )
        comparisons[name] = {
            "impression_level": _comparison_dict(imp),
            "user_level": users,
        }
    sample_ratio = None
    if shares is not None:
        missing = [n for n in shares if n not in arms]
        counts = [arms[n]["users"] if n in arms else 0 for n in shares]
        chi2, p, flag = sample_ratio_mismatch(counts, list(shares.values()))
        sample_ratio = {"chi2": chi2, "p_value": p, "mismatch": flag, "arms_without_users": missing}
    return {
        "experiment": experiment,
        "level": level,
        "control": control,
        "arms": arms,
        "comparisons": comparisons,
        "sample_ratio": sample_ratio,
    }


def _calibration(
    frame: pd.DataFrame, rows: pd.DataFrame, level: float
) -> dict[str, dict[str, dict[str, Any]]]:
    """Online calibration per arm: arm -> slot ("all" positions, "top" = rank 1) ->
    impressions, predicted_ctr (mean of the served impressions' predicted means, NaN
    ignored), model_predicted_ctr (the same of the model's own means before the service's
    online recalibration; NaN where none is known), observed_ctr with its Wilson interval
    (low, high) at ``level`` and ``within`` (the prediction inside the interval). The top
    slot is where a model that predicts the position-1 CTR (a position-aware model asked
    for position 1) and the clicks measure the same thing; over all positions the position
    effect lowers the observed CTR."""
    own = rows["model_mean"] if "model_mean" in rows else pd.Series(np.nan, index=rows.index)
    data = frame.assign(
        mean=rows["mean"].astype("float64").to_numpy(),
        model_mean=own.astype("float64").to_numpy(),
        top=rows["position"].astype("int64").to_numpy() == 1,
    )
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, group in data.groupby("arm", sort=True):
        out[str(name)] = {}
        for slot, part in (("all", group), ("top", group[group["top"]])):
            n, c = len(part), int(part["click"].sum())
            predicted = float(part["mean"].mean()) if n else float("nan")
            low, high = wilson_interval(c, n, level) if n else (float("nan"), float("nan"))
            out[str(name)][slot] = {
                "impressions": n,
                "clicks": c,
                "predicted_ctr": predicted,
                "model_predicted_ctr": float(part["model_mean"].mean()) if n else float("nan"),
                "observed_ctr": c / n if n else float("nan"),
                "low": low,
                "high": high,
                "within": bool(low <= predicted <= high),
            }
    return out


def _comparison_dict(c: Any) -> dict[str, Any]:
    return {
        k: getattr(c, k)
        for k in ("difference", "low", "high", "relative_lift", "z", "p_value", "significant")
    }
