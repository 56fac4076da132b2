"""Build a policy from its name and parameters (what the CLI and the simulator take)."""

from __future__ import annotations

from wager.policies.base import Policy
from wager.policies.epsilon_greedy import EpsilonGreedy
from wager.policies.greedy import Greedy
from wager.policies.softmax import SoftmaxPolicy
from wager.policies.thompson import ThompsonSampling
from wager.policies.ucb import UCB

#: each policy name and the parameters it takes (the first one, if any, is required;
#: UCB's epsilon is its optional floor of uniform picks)
POLICY_PARAMETERS: dict[str, tuple[str, ...]] = {
    "greedy": (),
    "epsilon_greedy": ("epsilon",),
    "ucb": ("beta", "epsilon"),
    "thompson": ("draws",),
    "softmax": ("temperature",),
}
_REQUIRED = {"epsilon_greedy": "epsilon", "ucb": "beta", "softmax": "temperature"}
_EXAMPLE = {"epsilon": 0.1, "beta": 1.0, "temperature": 0.1}


def policy_from_name(
    name: str,
    *,
    beta: float | None = None,
    epsilon: float | None = None,
    temperature: float | None = None,
    draws: int | None = None,
    batch_aware: bool = False,
) -> Policy:
    """The policy ``name`` with its parameters.

    Args:
        name: "greedy", "epsilon_greedy", "ucb", "thompson" or "softmax".
        beta: UCB's exploration weight in stds (required for "ucb").
        epsilon: epsilon-greedy's exploration probability (required for "epsilon_greedy");
            for "ucb", the optional epsilon floor of uniform picks (:class:`~wager.policies.UCB`).
        temperature: the softmax temperature (required for "softmax").
        draws: Thompson sampling's Monte Carlo draws per propensity (None: its default).
        batch_aware: UCB only: shrink each std by the impressions served since the last fit
            (:class:`~wager.policies.UCB`).

    Returns:
        e.g. ``policy_from_name("ucb", beta=1.0) == UCB(beta=1.0)``.

    Raises:
        ValueError: an unknown name (the choices are listed), a required parameter missing,
            a parameter the policy does not take, or a value out of its range.
    """
    given = {"beta": beta, "epsilon": epsilon, "temperature": temperature, "draws": draws}
    if name not in POLICY_PARAMETERS:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICY_PARAMETERS)}")
    takes = POLICY_PARAMETERS[name]
    extra = [p for p, v in given.items() if v is not None and p not in takes]
    if batch_aware and name != "ucb":
        extra.append("batch_aware")
    if extra:
        what = f"takes only {', '.join(takes)}" if takes else "takes no parameters"
        raise ValueError(
            f"policy {name!r} {what}; {', '.join(extra)} does not apply to it (drop it)"
        )
    required = _REQUIRED.get(name)
    if required is not None and given[required] is None:
        raise ValueError(f"policy {name!r} needs {required}, e.g. {required}={_EXAMPLE[required]}")
    if name == "epsilon_greedy":
        return EpsilonGreedy(epsilon=epsilon)  # type: ignore[arg-type]  # checked above
    if name == "ucb":
        return UCB(
            beta=beta,  # type: ignore[arg-type]  # checked above
            batch_aware=batch_aware,
            epsilon=0.0 if epsilon is None else epsilon,
        )
    if name == "softmax":
        return SoftmaxPolicy(temperature=temperature)  # type: ignore[arg-type]
    if name == "thompson":
        return ThompsonSampling() if draws is None else ThompsonSampling(draws=draws)
    return Greedy()
