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
