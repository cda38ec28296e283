"""Checkpoint and resume: a stopped or killed run continues to the same ledger."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from server.checkpoint import Checkpoint, CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from tests.federation_harness import SMALL, assert_same_ledgers, read_rows, run_inprocess

FP32 = {**SMALL, "uplink": "fp32", "downlink": "fp32", "downlink-mode": "full", "num-server-rounds": 4}
# Error feedback on both sides and a lossy delta downlink: clients hold state a restart loses.
EF = {**SMALL, "uplink": "prune=topk,keep=0.05,quant=ternary,ef=true",
      "downlink": "prune=topk,keep=0.05,quant=ternary,ef=true", "downlink-mode": "delta", "num-server-rounds": 4}


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
    # a reader of the finished run takes it as written, whatever config it asks with
    read = read_checkpoint(tmp_path)
    assert read.config == {"seed": 1, "lr": 0.1, "resume": False} and read.history == got.history
    assert read_checkpoint(tmp_path / "empty") is None


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    run_inprocess(FP32, out)
    return read_rows(out)


@pytest.fixture(scope="module")
def uninterrupted_ef(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole-ef")
    run_inprocess({**EF, "client-state-dir": str(out / "client-state")}, out)
    return read_rows(out)


@pytest.mark.slow  # Ray worker processes; tests/test_server_loop.py resumes in-process (delta mode)
def test_stopped_then_resumed_equals_uninterrupted(tmp_path, uninterrupted):
    run_inprocess({**FP32, "num-server-rounds": 2}, tmp_path)
    summary, _ = run_inprocess({**FP32, "resume": True}, tmp_path)
    assert summary["resumed_at_round"] == 2 and summary["resume_handshake_bytes"] > 0
    _same_ledgers(read_rows(tmp_path), uninterrupted)


@pytest.mark.slow
@pytest.mark.parametrize("config", ["fp32", "ef"])
def test_killed_runner_resumes_to_the_same_ledger(tmp_path, request, config):
    """SIGTERM the blocking runner mid-run, resume it: same ledger as the uninterrupted in-process run.

    With error feedback too: ``simulations.run`` gives the clients a ``client-state-dir``, so
    they come back with their residuals and models, and every payload byte and accuracy matches.
    """
    settings = FP32 if config == "fp32" else EF
    uninterrupted = request.getfixturevalue("uninterrupted" if config == "fp32" else "uninterrupted_ef")
    out = tmp_path / "run"
    args = [f"{k}={v}" if not isinstance(v, str) else f'{k}="{v}"' for k, v in settings.items()]
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
    # The runner's train instructions name its client-state folder (the in-process run's do not, or name
    # another of a different length): wire bytes differ by that path; payload columns are exact.
    assert_same_ledgers(read_rows(out), uninterrupted, envelope_jitter=16 + len(str(out / "client-state")) + 64)
    assert not (out / "client-state").exists()  # deleted once the run completed


# ---------------------------------------------------------------- checkpoint edge cases (no federation)

def _ckpt(round_: int = 3, history=(b"\x01\x02", b"", b"xyz")) -> Checkpoint:
    w = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    return Checkpoint(round_, round_ + 1, {"seed": 1, "lr": 0.1}, w, {"a": w["a"] * 2},
                      {"m": {"a": w["a"] + 1}, "v": {"a": w["a"] * 0.5}}, list(history))


def test_crash_between_the_two_renames_recovers_the_previous_checkpoint(tmp_path):
    save_checkpoint(tmp_path, _ckpt(3))
    # save_checkpoint moves checkpoint/ to .checkpoint.old/, then .checkpoint.new/ to checkpoint/;
    # a crash in between leaves only .checkpoint.old/ (and the staging directory)
    os.replace(tmp_path / "checkpoint", tmp_path / ".checkpoint.old")
    got = load_checkpoint(tmp_path, {"seed": 1, "lr": 0.1})
    assert got is not None and got.round == 3 and got.history == [b"\x01\x02", b"", b"xyz"]
    assert torch.equal(got.optimizer_state["v"]["a"], _ckpt().optimizer_state["v"]["a"])
    save_checkpoint(tmp_path, _ckpt(4))  # the next save replaces it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert load_checkpoint(tmp_path, {"seed": 1, "lr": 0.1}).round == 4


def test_checkpoint_wins_over_a_leftover_old_one(tmp_path):
    save_checkpoint(tmp_path / "x", _ckpt(2))
    os.replace(tmp_path / "x" / "checkpoint", tmp_path / ".checkpoint.old")
    save_checkpoint(tmp_path, _ckpt(5))
    assert load_checkpoint(tmp_path, {"seed": 1, "lr": 0.1}).round == 5


def _edit_state(tmp_path, **changes):
    import json

    path = tmp_path / "checkpoint" / "state.json"
    state = json.loads(path.read_text())
    state.update(changes)
    path.write_text(json.dumps(state))


def test_other_format_is_refused(tmp_path):
    save_checkpoint(tmp_path, _ckpt())
    _edit_state(tmp_path, format=2)
    with pytest.raises(CheckpointError, match="format 2 != 1"):
        load_checkpoint(tmp_path, {"seed": 1, "lr": 0.1})


@pytest.mark.parametrize("lengths", [[2, 0, 2], [2, 0, 4], [2, 0], [2, 0, 3, 1]])
def test_history_lengths_must_match_history_bin(tmp_path, lengths):
    save_checkpoint(tmp_path, _ckpt())
    _edit_state(tmp_path, history_lengths=lengths)
    with pytest.raises(CheckpointError, match="history.bin length"):
        load_checkpoint(tmp_path, {"seed": 1, "lr": 0.1})


def test_missing_or_damaged_files_are_a_checkpoint_error(tmp_path):
    save_checkpoint(tmp_path, _ckpt())
    (tmp_path / "checkpoint" / "optimizer-v.npz").unlink()
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(tmp_path, {"seed": 1, "lr": 0.1})
    save_checkpoint(tmp_path, _ckpt())
    (tmp_path / "checkpoint" / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(tmp_path, {"seed": 1, "lr": 0.1})


def test_resume_and_round_count_may_change_but_nothing_else(tmp_path):
    save_checkpoint(tmp_path, Checkpoint(1, 2, {"seed": 1, "num-server-rounds": 3, "resume": False,
                                                "out-dir": "/a"}, {}, {}, {}, []))
    assert load_checkpoint(tmp_path, {"seed": 1, "num-server-rounds": 9, "resume": True, "out-dir": "/b"})
    with pytest.raises(CheckpointError, match=r"keys \['server-lr'\]"):
        load_checkpoint(tmp_path, {"seed": 1, "num-server-rounds": 3, "server-lr": 0.5})


def test_a_crash_in_the_first_save_after_a_recovery_keeps_the_recovered_checkpoint(tmp_path, monkeypatch):
    """Only .checkpoint.old/ is left (crash between the renames); the next save crashes before its swap."""
    import server.checkpoint as ck

    save_checkpoint(tmp_path, _ckpt(3))
    os.replace(tmp_path / "checkpoint", tmp_path / ".checkpoint.old")
    real_replace = os.replace

    def crash_on_swap(src, dst):
        if str(dst).endswith(f"{os.sep}checkpoint"):
            raise OSError("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(ck.os, "replace", crash_on_swap)
    with pytest.raises(OSError, match="power cut"):
        save_checkpoint(tmp_path, _ckpt(4))
    monkeypatch.setattr(ck.os, "replace", real_replace)
    got = load_checkpoint(tmp_path, {"seed": 1, "lr": 0.1})
    assert got is not None and got.round == 3  # not lost: a resume continues after round 3
