"""policy_from_name: every name, and the errors that list the choices."""

from __future__ import annotations

import pytest

from wager.policies import (
    UCB,
    EpsilonGreedy,
    Greedy,
    SoftmaxPolicy,
    ThompsonSampling,
    policy_from_name,
)


def test_every_name_builds_its_policy():
    assert policy_from_name("greedy") == Greedy()
    assert policy_from_name("epsilon_greedy", epsilon=0.1) == EpsilonGreedy(0.1)
    assert policy_from_name("ucb", beta=1.5) == UCB(1.5)
    assert policy_from_name("thompson") == ThompsonSampling()
    assert policy_from_name("thompson", draws=50) == ThompsonSampling(draws=50)
    assert policy_from_name("softmax", temperature=0.2) == SoftmaxPolicy(0.2)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        (
            "bandit",
            {},
            "unknown policy 'bandit'; choose one of greedy, epsilon_greedy, ucb, thompson, softmax",
        ),
        ("ucb", {}, "policy 'ucb' needs beta, e.g. beta=1.0"),
        ("epsilon_greedy", {}, "policy 'epsilon_greedy' needs epsilon"),
        ("softmax", {}, "policy 'softmax' needs temperature"),
        ("greedy", {"beta": 1.0}, "policy 'greedy' takes no parameters; beta does not apply"),
        ("ucb", {"temperature": 0.1, "beta": 1.0}, "takes only beta, epsilon; temperature does"),
        ("ucb", {"beta": -1.0}, "beta must be a finite number >= 0"),
        ("thompson", {"draws": 0}, "draws must be an integer >= 1"),
    ],
)
def test_bad_names_and_parameters_are_named(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        policy_from_name(name, **kwargs)
