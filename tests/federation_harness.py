"""In-process federations for tests: the real ServerApp loop and ClientApp on Flower's
simulation engine, with a Grid that records every message it sends and receives.

``flwr.simulation.run_simulation`` (deprecated, but the only in-process engine)
does not read ``[tool.flwr.app.config]``, so the test passes the config itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid, ServerApp

from client.client_app import app as client_app
from fedsqueeze.config import RunConfig
from server.federation import run_federation


class RecordingGrid(Grid):
    """Delegates to a real Grid; keeps (sent messages, received replies) per push."""

    def __init__(self, inner: Grid):
        self.inner = inner
        self.exchanges: list[tuple[list[Message], list[Message]]] = []
        self._exchange_of: dict[str, int] = {}  # pushed message id -> index into exchanges

    def set_run(self, run):  # pragma: no cover - delegated
        self.inner.set_run(run)

    @property
    def run(self):
        return self.inner.run

    def create_message(self, *args, **kwargs):  # pragma: no cover - deprecated API
        return self.inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def push_messages(self, messages):
        messages = list(messages)
        ids = list(self.inner.push_messages(messages))
        self.exchanges.append((messages, []))
        self._exchange_of.update(dict.fromkeys(ids, len(self.exchanges) - 1))
        return ids

    def pull_messages(self, message_ids):
        replies = list(self.inner.pull_messages(message_ids))
        for r in replies:
            self.exchanges[self._exchange_of[r.metadata.reply_to_message_id]][1].append(r)
        return replies

    def send_and_receive(self, messages, *, timeout=None):  # pragma: no cover - the loop uses exchange()
        raise AssertionError("server code should call server.exchange.exchange, not send_and_receive")


def run_inprocess(
    config: Mapping[str, Any], out_dir: Path, num_supernodes: int = 5
) -> tuple[dict[str, Any], RecordingGrid]:
    """Run a federation in this process; return (summary, recording grid)."""
    from flwr.simulation import run_simulation

    cfg = RunConfig.from_mapping({**config, "out-dir": str(out_dir)})
    holder: dict[str, Any] = {}
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context) -> None:
        rec = RecordingGrid(grid)
        holder["grid"] = rec
        holder["summary"] = run_federation(rec, cfg, Path(out_dir))

    logging.getLogger("flwr").setLevel(logging.ERROR)
    run_simulation(
        server_app=server,
        client_app=client_app,
        num_supernodes=num_supernodes,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": 2, "logging_level": "ERROR", "log_to_driver": False,
                          "include_dashboard": False},
        },
    )
    if "summary" not in holder:
        raise RuntimeError("the ServerApp did not finish; see the log above")
    return holder["summary"], holder["grid"]


SMALL = {
    "model": "seed-cnn",
    "num-server-rounds": 3,
    "fraction-train": 0.4,
    "min-available-nodes": 5,
    "local-epochs": 1,
    "batch-size": 20,
    "lr": 0.05,
}


VOLATILE = {"round_s", "wall_s", "train_phase_s", "eval_s", "client_train_s", "client_encode_s", "train_s"}


def read_rows(out_dir: Path, name: str = "metrics.csv") -> list[dict[str, str]]:
    """The ledger rows of a run directory (``clients.csv``: one row per sampled client and round)."""
    import csv

    with open(Path(out_dir) / name, newline="") as fh:
        return list(csv.DictReader(fh))


def assert_same_ledgers(a: list[dict[str, str]], b: list[dict[str, str]], envelope_jitter: int) -> None:
    """Two ledgers are equal but for wall time and Flower's random-id varints.

    Flower's node and run ids are random 64-bit varints in every message's
    metadata, so a message can be a few bytes longer or shorter from one run
    (or entry point) to the next; payloads are bit-identical. Wire-byte columns
    may therefore differ by ``envelope_jitter`` bytes per message; every other
    column, the ``*_payload_bytes`` ones included, must be identical.
    """
    assert len(a) == len(b)
    messages = 0
    for ra, rb in zip(a, b):
        messages += int(ra["clients_sampled"])
        for key in ra:
            if key in VOLATILE or key.endswith("_ratio"):  # ratios derive from the byte columns
                continue
            if key.endswith("_bytes") and "dense" not in key and "payload" not in key:
                bound = envelope_jitter * (messages if key.startswith("cum_") else int(ra["clients_sampled"]))
                assert abs(int(ra[key]) - int(rb[key])) <= bound, (ra["round"], key)
            else:
                assert ra[key] == rb[key], (ra["round"], key)


class DirectGrid(Grid):
    """A Grid that hands each message straight to the real ClientApp, in this process.

    No Ray and no worker processes: the quick test loop can afford several
    federations with it. What it keeps of Flower's simulation engine: every
    message crosses a serialization boundary (Flower's own deflate/inflate of
    its content-addressed objects, so the client never sees the server's
    objects), each node has its own ``Context`` (``partition-id``,
    ``num-partitions``, persistent ``state``), a ClientApp that raises yields
    an error reply with code 2 and leaves the node's state as it was, and a
    reply is pulled once. What it drops: process isolation, concurrency and
    timeouts (a ``hang`` injection would really sleep; don't use it here).
    ``exchanges`` records (sent, replies) per push like :class:`RecordingGrid`.
    """

    def __init__(self, num_nodes: int, first_node_id: int = 1001):
        from flwr.app import Context, RecordDict
        from flwr.common.constant import SUPERLINK_NODE_ID
        from flwr.supercore.task_identity import TaskIdentity

        # Messages built outside the runtime need a task identity first.
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
        self.contexts = {
            first_node_id + i: Context(run_id=1, node_id=first_node_id + i, state=RecordDict(), run_config={},
                                       node_config={"partition-id": i, "num-partitions": num_nodes})
            for i in range(num_nodes)
        }
        self.exchanges: list[tuple[list[Message], list[Message]]] = []
        self._ready: dict[str, Message] = {}

    def set_run(self, run):  # pragma: no cover - not used outside the runtime
        raise AssertionError("DirectGrid has no run")

    @property
    def run(self):  # pragma: no cover
        raise AssertionError("DirectGrid has no run")

    def create_message(self, *args, **kwargs):  # pragma: no cover - deprecated API
        raise AssertionError("server code builds Messages itself")

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    @staticmethod
    def _copy(msg: Message, message_id: str) -> Message:
        """``msg`` rebuilt from its deflated objects alone, as the other side receives it."""
        from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
        from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

        contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(msg).items()}
        out = inflate_object_from_contents(msg.object_id, contents)
        out.metadata.__dict__["_message_id"] = message_id
        return out

    def push_messages(self, messages):
        import copy
        from uuid import uuid4

        from flwr.app import Error

        messages = list(messages)
        ids, replies = [], []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            ids.append(msg.metadata.message_id)
            received = self._copy(msg, msg.metadata.message_id)
            context = self.contexts[msg.metadata.dst_node_id]
            saved = copy.deepcopy(context.state)
            try:
                reply = client_app(received, context)
            except Exception as exc:  # noqa: BLE001 - Flower turns any ClientApp exception into an error reply
                context.state = saved  # a call that raised saves nothing
                reply = Message(Error(code=2, reason=f"{type(exc)}:<'{exc}'>"), reply_to=received)
            reply = self._copy(reply, str(uuid4())) if not reply.has_error() else reply
            self._ready[msg.metadata.message_id] = reply
            replies.append(reply)
        self.exchanges.append((messages, replies))
        return ids

    def pull_messages(self, message_ids):
        return [self._ready.pop(i) for i in list(message_ids) if i in self._ready]

    def send_and_receive(self, messages, *, timeout=None):  # pragma: no cover - the loop uses exchange()
        raise AssertionError("server code should call server.exchange.exchange, not send_and_receive")


def run_direct(config: Mapping[str, Any], out_dir: Path, num_supernodes: int = 5
               ) -> tuple[dict[str, Any], DirectGrid]:
    """Run a federation with the real server loop and ClientApp in this process (see :class:`DirectGrid`)."""
    cfg = RunConfig.from_mapping({**config, "out-dir": str(out_dir)})
    grid = DirectGrid(num_supernodes)
    return run_federation(grid, cfg, Path(out_dir)), grid


def direct_runner(config: Mapping[str, Any], out_dir: Path, *, num_supernodes: int, quiet: bool = True
                  ) -> dict[str, Any]:
    """A :func:`simulations.sweep.run_sweep` runner on :func:`run_direct`."""
    return run_direct(config, Path(out_dir), num_supernodes)[0]
