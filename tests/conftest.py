"""Shared fixtures. Tests use real MNIST: ``$FEDSQUEEZE_DATA_DIR``, ``../shared/data/mnist`` or the cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data" / "mnist"


def mnist_dir() -> str | None:
    """The configured MNIST directory, if any (the loader also checks its cache)."""
    if os.environ.get("FEDSQUEEZE_DATA_DIR"):
        return os.environ["FEDSQUEEZE_DATA_DIR"]
    return str(SHARED) if SHARED.is_dir() else None


@pytest.fixture(scope="session")
def instruction():
    """A server train instruction built outside the Flower runtime, to reply to in tests."""
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    # Messages built outside the runtime need a task identity first.
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    return Message(RecordDict({"config": ConfigRecord({"round": 1})}), 7, "train", group_id="1")


@pytest.fixture(scope="session")
def mnist():
    from fedsqueeze.data import load_mnist

    return load_mnist(mnist_dir())


def pytest_sessionstart(session):
    # Orphaned Ray/Flower helpers are re-parented to this process, not init...
    from simulations.run import become_subreaper, descendants

    become_subreaper()
    session.config._fedsqueeze_preexisting = set(descendants(os.getpid()))


def pytest_sessionfinish(session, exitstatus):
    # ...so whatever a test started and left behind is stopped here, by PID.
    from simulations.run import reap_orphans

    reap_orphans(keep=getattr(session.config, "_fedsqueeze_preexisting", set()))
