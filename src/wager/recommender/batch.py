"""Recommendations for many users, a chunk of users at a time, here or as Ray tasks.

:func:`recommend_chunks` cuts the users into chunks and yields each chunk's
``Recommender.recommend`` frame in chunk order, so memory holds a few chunks whatever the
number of users (``wager recommend --all-users --out``). With a Ray runner
(:class:`~wager.training.fanout.RayRunner`, ``--ray``) the chunks are Ray tasks: the fitted
recommender is put in Ray's object store once, the chunks run in rounds of ``window`` in
parallel, and the frames still come back in chunk order (at most ``window`` held). Chunk i's
policy draws come from a state seeded with (seed, i), so a seeded random policy gives the
same recommendations on either runner (they depend on the chunk size).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from wager.policies.base import PolicyState
from wager.training.fanout import Runner, SequentialRunner


@dataclass
class _Shared:
    """What every chunk's task reads: the fitted recommender and ``recommend``'s options."""

    rec: Any
    options: dict[str, Any]


@dataclass
class _Chunk:
    """One chunk: its users and its policy state's seed (None: unseeded)."""

    users: list[Any]
    seed: int | None


def chunk_seed(seed: int | None, index: int) -> int | None:
    """The seed of chunk ``index``'s policy state from the run's ``seed``: ``seed`` itself
    for the first chunk (one chunk draws as ``recommend`` with ``PolicyState.seeded(seed)``),
    a hash of (seed, index) for the others; None stays None."""
    if seed is None or index == 0:
        return seed
    return int(np.random.SeedSequence([int(seed), index]).generate_state(1, np.uint64)[0] >> 1)


def _recommend_chunk(shared: _Shared, chunk: _Chunk) -> pd.DataFrame:
    """``recommend`` for one chunk of users (a Ray task, or a call here)."""
    options = dict(shared.options)
    if options.get("policy") is not None:
        options["state"] = PolicyState() if chunk.seed is None else PolicyState.seeded(chunk.seed)
    return shared.rec.recommend(chunk.users, **options)


def recommend_chunks(
    rec: Any,
    users: Sequence[Any],
    chunk_users: int,
    *,
    runner: Runner | None = None,
    seed: int | None = None,
    window: int = 4,
    on_chunk: Callable[[int], None] | None = None,
    **options: Any,
) -> Iterator[pd.DataFrame]:
    """``rec.recommend(chunk, **options)`` for consecutive chunks of ``chunk_users`` users,
    in order (at least one frame, maybe empty).

    Args:
        rec: the fitted recommender.
        users: the users, in output order.
        chunk_users: users per chunk (>= 1).
        runner: where the chunks run (default here, one after another).
        seed: the policy's seed (chunk i's state: :func:`chunk_seed`), or None.
        window: chunks in flight at once on a parallel runner (and so held at most).
        on_chunk: called with each chunk's number of users once it is recommended.
        options: ``recommend``'s keyword arguments (k, policy, ...; not ``state``).
    """
    if chunk_users < 1:
        raise ValueError(f"chunk_users must be >= 1, got {chunk_users}")
    users = list(users)
    starts = range(0, max(len(users), 1), chunk_users)
    chunks = [_Chunk(users[s : s + chunk_users], chunk_seed(seed, i)) for i, s in enumerate(starts)]
    runner = runner or SequentialRunner()
    shared = _Shared(rec, options)
    with runner if isinstance(runner, contextlib.AbstractContextManager) else nullcontext():
        for lo in range(0, len(chunks), window):  # a round of chunks: at most window held
            group = chunks[lo : lo + window]
            held: dict[int, pd.DataFrame] = {}
            next_out = 0
            for i, frame in runner.run(_recommend_chunk, group, shared, window=window):
                held[i] = frame
                while next_out in held:
                    if on_chunk is not None:
                        on_chunk(len(group[next_out].users))
                    yield held.pop(next_out)
                    next_out += 1
