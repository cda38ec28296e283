"""Shared fixtures. Tests use real MNIST: ``$FEDSQUEEZE_DATA_DIR``, ``../shared/data/mnist`` or the cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data" / "mnist"

# Hypothesis profiles. `ci` (the default, also under CI=true) is derandomized: every run draws
# the same examples, so a test cannot pass on one run and fail on the next by chance.
# `explore` draws fresh random examples, ten times as many as Hypothesis' default, for hunting
# bugs locally: HYPOTHESIS_PROFILE=explore python -m pytest tests/compression/test_properties.py
# A failure it finds is printed with its example; add that as an explicit @example to the test.
# Tests that set max_examples themselves keep their own count in every profile.
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", max_examples=1000, derandomize=False, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


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


@pytest.fixture(scope="session")
def stc_like_whole(tmp_path_factory):
    """One uninterrupted federation of ``tests.test_exact_resume.STC_LIKE``: ``(out_dir, summary)``.

    Several tests compare a variant against it (a resumed run, lossless coders); it runs once.
    """
    from tests.federation_harness import run_direct
    from tests.test_exact_resume import NODES, _config

    out = tmp_path_factory.mktemp("runs") / "whole"
    summary, _ = run_direct(_config(tmp_path_factory.mktemp("cs")), out, NODES)
    return out, summary
