"""server.exchange: every reply collected, soon after it lands; a timeout returns what arrived."""

import time
from types import SimpleNamespace

from server.exchange import exchange


class ScheduledGrid:
    """Replies to pushed message ``i`` become pullable ``delays[i]`` s after the push (None: never)."""

    def __init__(self, delays):
        self.delays, self.pulls, self.pushed_at = delays, 0, None

    def push_messages(self, messages):
        self.pushed_at = time.monotonic()
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, message_ids):
        self.pulls += 1
        now = time.monotonic() - self.pushed_at
        ready = [i for i, d in enumerate(self.delays) if d is not None and d <= now and f"m{i}" in set(message_ids)]
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=f"m{i}"), i=i) for i in ready]


def test_collects_every_reply_once_and_soon_after_the_last():
    grid = ScheduledGrid([0.05, 0.3, 0.0, 0.3])
    start = time.monotonic()
    replies = exchange(grid, ["a", "b", "c", "d"], timeout=None)
    elapsed = time.monotonic() - start
    assert sorted(r.i for r in replies) == [0, 1, 2, 3]
    # the last reply lands at 0.3 s; Grid.send_and_receive over HTTP would return at 3 s
    assert 0.3 <= elapsed < 0.3 + 0.05 + 0.5
    assert grid.pulls <= 0.3 / 0.05 + 6  # backs off to 50 ms while nothing arrives: no busy loop


def test_timeout_returns_the_replies_that_arrived():
    grid = ScheduledGrid([0.0, None, 0.1])
    start = time.monotonic()
    replies = exchange(grid, ["a", "b", "c"], timeout=0.4)
    elapsed = time.monotonic() - start
    assert sorted(r.i for r in replies) == [0, 2]
    assert 0.4 <= elapsed < 0.4 + 0.5


def test_nothing_to_send_returns_at_once():
    grid = ScheduledGrid([])
    assert exchange(grid, [], timeout=None) == []
    assert grid.pulls == 0
