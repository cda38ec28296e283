"""Checkpoint and resume: a stopped or killed run continues to the same ledger."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from server.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from tests.federation_harness import SMALL, assert_same_ledgers, read_rows, run_inprocess

FP32 = {**SMALL, "uplink": "fp32", "downlink": "fp32", "downlink-mode": "full", "num-server-rounds": 4}


def _same_ledgers(a, b):
    # The two entry points stamp slightly different metadata (measured <= 9 B a message).
    assert_same_ledgers(a, b, envelope_jitter=16)


def test_checkpoint_round_trip_and_config_guard(tmp_path):
    w = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    ckpt = Checkpoint(3, 4, {"seed": 1, "lr": 0.1, "resume": False}, w, {"a": w["a"] * 2},
                      {"m": {"a": w["a"] + 1}}, [b"\x01\x02", b"", b"xyz"])
    save_checkpoint(tmp_path, ckpt)
    save_checkpoint(tmp_path, ckpt)  # overwrite is atomic and leaves no staging dirs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    got = load_checkpoint(tmp_path, {"seed": 1, "lr": 0.1, "resume": True})
    assert got.round == 3 and got.ledger_rows == 4 and got.history == [b"\x01\x02", b"", b"xyz"]
    assert torch.equal(got.broadcast["a"], w["a"] * 2) and torch.equal(got.optimizer_state["m"]["a"], w["a"] + 1)
    with pytest.raises(CheckpointError, match="lr"):
        load_checkpoint(tmp_path, {"seed": 1, "lr": 0.2})
    assert load_checkpoint(tmp_path / "empty", {}) is None


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    run_inprocess(FP32, out)
    return read_rows(out)


def test_stopped_then_resumed_equals_uninterrupted(tmp_path, uninterrupted):
    run_inprocess({**FP32, "num-server-rounds": 2}, tmp_path)
    summary, _ = run_inprocess({**FP32, "resume": True}, tmp_path)
    assert summary["resumed_at_round"] == 2 and summary["resume_handshake_bytes"] > 0
    _same_ledgers(read_rows(tmp_path), uninterrupted)


@pytest.mark.slow
def test_killed_runner_resumes_to_the_same_ledger(tmp_path, uninterrupted):
    """SIGTERM the blocking runner mid-run, resume it: same ledger as the uninterrupted in-process run."""
    out = tmp_path / "run"
    args = [f"{k}={v}" if not isinstance(v, str) else f'{k}="{v}"' for k, v in FP32.items()]
    cmd = [sys.executable, "-m", "simulations.run", "fedavg-fp32", *args, "--num-supernodes", "5",
           "--quiet", "--out", str(out)]
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if (out / "metrics.csv").exists() and len(read_rows(out)) >= 3:  # rounds 0..2 written
                break
            time.sleep(0.5)
        else:
            pytest.fail("the run never reached round 2")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) != 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done = subprocess.run(cmd + ["--resume"], timeout=600)
    assert done.returncode == 0
    _same_ledgers(read_rows(out), uninterrupted)
