"""The service's background ticker (wager.serving.periodic)."""

from __future__ import annotations

import logging
import threading

import pytest

from wager.serving.periodic import Periodic


def test_ticks_until_stopped_and_a_failing_tick_is_logged_not_fatal(caplog):
    ticks: list[int] = []
    enough = threading.Event()

    def tick() -> None:
        ticks.append(len(ticks))
        if len(ticks) == 2:
            raise RuntimeError("store hiccup")
        if len(ticks) >= 4:
            enough.set()

    job = Periodic("test-tick", tick, lambda: 0.01, "testing the ticker")
    with caplog.at_level(logging.WARNING, logger="wager.serving"):
        job.start()
        job.start()  # a second start is a no-op
        assert enough.wait(5)
        job.stop()
    count = len(ticks)
    assert count >= 4
    assert "testing the ticker: store hiccup" in caplog.text
    job.stop()  # stopping twice is harmless
    assert len(ticks) == count


@pytest.mark.parametrize("seconds", [0.05])
def test_the_interval_is_read_before_each_wait(seconds):
    asked: list[float] = []
    done = threading.Event()

    def interval() -> float:
        asked.append(seconds)
        if len(asked) >= 3:
            done.set()
        return seconds

    job = Periodic("test-interval", lambda: None, interval, "x")
    job.start()
    assert done.wait(5)
    job.stop()
    assert len(asked) >= 3
