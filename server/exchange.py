"""Push a round's messages and collect the replies, polling the SuperLink briskly.

``Grid.send_and_receive`` waits between pulls: 0.1 s in the ``InMemoryGrid``
that ``flwr run`` gives a simulated ServerApp, a fixed 3 s in the ``HttpGrid``
of a deployed one (flwr 1.42, ``superlink/grid/``), so a client phase that
ends at 3.4 s is noticed at 6 s there. Here the wait starts at 10 ms and
doubles up to 50 ms while nothing arrives: one cheap empty pull per
interval, and the round goes on within 50 ms of its last reply.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

__all__ = ["exchange"]


def exchange(grid: Grid, messages: Iterable[Message], timeout: float | None = None, *,
             first_poll_s: float = 0.01, max_poll_s: float = 0.05) -> list[Message]:
    """Send ``messages`` and return the replies that arrive within ``timeout`` seconds.

    Parameters
    ----------
    grid : Grid
        The ServerApp's grid.
    messages : iterable of Message
        The instructions to push.
    timeout : float or None
        Give up waiting after this many seconds (``None``: wait for every reply).
        Late replies are simply not returned; the caller records them as timeouts.
    first_poll_s, max_poll_s : float
        The wait between pulls starts at ``first_poll_s`` and doubles up to
        ``max_poll_s``; it resets whenever a pull brings replies, because
        clients of one round tend to finish close together.

    Returns
    -------
    list of Message
        Replies (including error replies) in arrival order.
    """
    pending = set(grid.push_messages(messages))
    deadline = None if timeout is None else time.monotonic() + timeout
    replies: list[Message] = []
    wait = first_poll_s
    while pending:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        wait = first_poll_s if got else min(2 * wait, max_poll_s)
        if not pending or (deadline is not None and time.monotonic() >= deadline):
            break
        time.sleep(wait if deadline is None else max(0.0, min(wait, deadline - time.monotonic())))
    return replies
