"""server.exchange: every reply collected, soon after it lands; a timeout returns what arrived.

Time is virtual: ``server.exchange`` gets a clock whose ``sleep`` advances ``monotonic``, so the
assertions are about the polling schedule itself (how many pulls, how long each wait), never about
how busy the machine running the test is.
"""

from types import SimpleNamespace

import pytest

import server.exchange as ex
from server.exchange import exchange


class Clock:
    """``time.monotonic`` / ``time.sleep`` stand-ins; ``sleep`` only moves the clock."""

    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        assert s >= 0
        self.sleeps.append(s)
        self.now += s


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(ex, "time", SimpleNamespace(monotonic=c.monotonic, sleep=c.sleep))
    return c


class ScheduledGrid:
    """Replies to pushed message ``i`` become pullable ``delays[i]`` s after the push (None: never)."""

    def __init__(self, clock, delays):
        self.clock, self.delays, self.pulls, self.pull_times = clock, delays, 0, []
        self.pushed_at, self.delivered = None, set()

    def push_messages(self, messages):
        self.pushed_at = self.clock.now
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, message_ids):
        self.pulls += 1
        self.pull_times.append(self.clock.now)
        now = self.clock.now - self.pushed_at
        ready = [i for i, d in enumerate(self.delays)
                 if d is not None and d <= now and f"m{i}" in set(message_ids) and i not in self.delivered]
        self.delivered.update(ready)
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=f"m{i}"), i=i) for i in ready]


def test_collects_every_reply_once_and_soon_after_the_last(clock):
    grid = ScheduledGrid(clock, [0.05, 0.3, 0.0, 0.3])
    replies = exchange(grid, ["a", "b", "c", "d"], timeout=None)
    assert sorted(r.i for r in replies) == [0, 1, 2, 3]
    # the last reply lands at 0.3 s and is pulled within one longest wait (50 ms) of it;
    # Grid.send_and_receive over HTTP would poll every 3 s
    assert 0.3 <= clock.now <= 0.3 + 0.05 + 1e-9
    assert grid.pull_times[-1] == clock.now  # nothing after the last pull


def test_waits_back_off_while_nothing_arrives_and_reset_on_a_reply(clock):
    grid = ScheduledGrid(clock, [0.0, 0.1, 0.5])
    exchange(grid, ["a", "b", "c"], timeout=None)
    assert all(0.01 - 1e-12 <= s <= 0.05 + 1e-12 for s in clock.sleeps)  # never a busy loop, never long
    # first pull brings reply 0 -> 10 ms; then doubling while empty: 20, 40, 50, 50 ms ...
    assert clock.sleeps[:4] == pytest.approx([0.01, 0.02, 0.04, 0.05])
    # ... until reply 1 lands (pulled at ~0.12 s), after which the wait is 10 ms again
    after_b = next(i for i, t in enumerate(grid.pull_times) if t >= 0.1)
    assert clock.sleeps[after_b] == pytest.approx(0.01)
    # no busy loop: about one pull per 50 ms of waiting, plus the short waits after each reply
    assert grid.pulls <= 0.5 / 0.05 + 2 * 4


def test_timeout_returns_the_replies_that_arrived(clock):
    grid = ScheduledGrid(clock, [0.0, None, 0.1])
    replies = exchange(grid, ["a", "b", "c"], timeout=0.4)
    assert sorted(r.i for r in replies) == [0, 2]
    assert clock.now == pytest.approx(0.4)  # exactly at the deadline, not a poll interval later
    assert grid.pull_times[-1] == pytest.approx(0.4)  # a last pull at the deadline itself


def test_poll_intervals_are_parameters(clock):
    grid = ScheduledGrid(clock, [0.0, 1.0])
    exchange(grid, ["a", "b"], timeout=None, first_poll_s=0.1, max_poll_s=0.2)
    assert clock.sleeps[:3] == pytest.approx([0.1, 0.2, 0.2]) and grid.pulls <= 1.0 / 0.2 + 3


def test_nothing_to_send_returns_at_once(clock):
    grid = ScheduledGrid(clock, [])
    assert exchange(grid, [], timeout=None) == []
    assert grid.pulls == 0 and clock.sleeps == []
