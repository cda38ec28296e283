"""A real Deployment Engine federation on loopback: one SuperLink, three SuperNodes, one killed mid-run.

Everything runs as separate OS processes exactly as in production (insecure,
on 127.0.0.1), driven by the same commands as ``docs/deployment.md``:

    flower-superlink --insecure --host 127.0.0.1 --port P --disable-runtime-dependency-installation
    flower-supernode --insecure --superlink 127.0.0.1:P --port Q_i \
        --node-config "partition-id=i num-partitions=12"           (i = 0, 1, 2)
    flwr run <repo> deploy --stream --run-config run-config.toml  ($FLWR_HOME/config.toml names "deploy")

After round 1 is in the ledger, SuperNode 2 is SIGKILLed (a crash: no
goodbye to the SuperLink). The run must still complete, the ledger must
record the lost client in later rounds (``timeout:2`` or ``crash:2``) and
accuracy must still improve. Every process is started in its own session
and stopped by process group in the fixture teardown.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from simulations.run import descendants
from tests.conftest import REPO, mnist_dir

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
ROUNDS = 3
KILLED = 2          # partition id of the SuperNode that is killed after round 1
NUM_PARTITIONS = 12  # MNIST split in 12, nodes hold 0-2: keeps each ClientApp call short on 2 cores
ROUND_TIMEOUT = 90.0  # wide margin: a ClientApp call is a fresh process, slow on a loaded 2-core box


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    return ""


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Stop the process group of a process this test started (SIGTERM, then SIGKILL)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group (e.g. ClientApp subprocesses)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


class Processes:
    """Processes started by this test, each in its own session (= process group)."""

    def __init__(self, logs: Path, env: dict[str, str]):
        self.logs, self.env, self.procs = logs, env, {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=self.logs)
        log.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str, tail: int = 4000) -> str:
        p = self.logs / f"{name}.log"
        return p.read_text(errors="replace")[-tail:] if p.exists() else ""

    def stop_all(self) -> None:
        """Stop every group we started, then any descendant that left its group (e.g. a SuperExec
        in its own session): those PIDs were spawned by our processes, so they are ours to stop."""
        spawned = set()
        for proc in self.procs.values():
            spawned |= set(descendants(proc.pid))
        for proc in reversed(list(self.procs.values())):
            stop_group(proc)
        time.sleep(1.0)
        for pid in spawned:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
                os.kill(pid, signal.SIGKILL)


def wait_healthy(port: int, proc: subprocess.Popen, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).is_success:
                return
        time.sleep(0.3)
    raise TimeoutError(f"{what} not healthy on port {port} within {timeout:.0f} s")


def read_rows(out_dir: Path) -> list[dict[str, str]]:
    path = out_dir / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def deployment(tmp_path):
    """SuperLink + 3 SuperNodes on free loopback ports; yields (processes, superlink port, env)."""
    flwr_home = tmp_path / "flwr-home"
    flwr_home.mkdir()
    env = {**os.environ, "FLWR_HOME": str(flwr_home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONUNBUFFERED": "1"}
    if mnist_dir():
        env["FEDSQUEEZE_DATA_DIR"] = mnist_dir()
    procs = Processes(tmp_path / "logs", env)
    port = free_port()
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "deploy"\n\n[superlink.deploy]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    try:
        link = procs.start("superlink", [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1",
                                         "--port", str(port), "--disable-runtime-dependency-installation"])
        wait_healthy(port, link, "flower-superlink")
        for i in range(3):
            procs.start(f"supernode-{i}", [
                str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                "--port", str(free_port()), "--node-config", f"partition-id={i} num-partitions={NUM_PARTITIONS}"])
        yield procs, port, env
    finally:
        procs.stop_all()


def flwr_ls(env: dict[str, str], *args: str) -> dict:
    out = subprocess.run([str(BIN / "flwr"), "ls", "deploy", "--format", "json", *args], env=env,
                         capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout)


def test_deployment_survives_a_killed_supernode(deployment, tmp_path):
    procs, port, env = deployment
    out_dir = tmp_path / "out"
    config = {
        "name": "deploy-stc", "model": "seed-cnn", "uplink": "stc", "downlink": "stc", "downlink-mode": "delta",
        "fraction-train": 1.0, "min-available-nodes": 3, "min-train-nodes": 2, "round-timeout": ROUND_TIMEOUT,
        "local-epochs": 1, "batch-size": 32, "num-server-rounds": ROUNDS, "out-dir": str(out_dir),
        "data-dir": mnist_dir() or "",
    }
    run_toml = tmp_path / "run-config.toml"
    run_toml.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in config.items()))
    t0 = time.monotonic()
    run = procs.start("flwr-run", [str(BIN / "flwr"), "run", str(REPO), "deploy", "--stream",
                                   "--run-config", str(run_toml)])
    killed_after = None
    deadline = t0 + 600
    while run.poll() is None and time.monotonic() < deadline:
        rows = read_rows(out_dir)
        if killed_after is None and any(int(r["round"]) >= 1 for r in rows):
            os.killpg(procs.procs[f"supernode-{KILLED}"].pid, signal.SIGKILL)
            killed_after = max(int(r["round"]) for r in rows)
        time.sleep(0.5)
    elapsed = time.monotonic() - t0
    assert run.poll() is not None, f"flwr run still going after {elapsed:.0f} s:\n{procs.log('flwr-run')}"
    assert killed_after is not None, f"round 1 never reached:\n{procs.log('flwr-run')}"

    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["status"] == "completed", procs.log("flwr-run")
    runs = flwr_ls(env)["runs"]
    assert len(runs) == 1 and runs[0]["status"] == "finished:completed", runs
    detail = flwr_ls(env, "--run-id", str(runs[0]["run-id"]))["runs"][0]
    assert detail["status"] == "finished:completed"

    rows = read_rows(out_dir)
    assert [int(r["round"]) for r in rows] == list(range(ROUNDS + 1))
    assert int(rows[0]["clients_sampled"]) == 3  # the handshake saw all three nodes
    before = [r for r in rows[1:] if int(r["round"]) <= killed_after]
    after = [r for r in rows[1:] if int(r["round"]) > killed_after]
    assert after, f"killed after round {killed_after}; no later round"
    assert all(int(r["clients_failed"]) == 0 for r in before), before
    for r in after:  # the dead node is sampled every round (fraction 1.0) and counted as lost
        assert int(r["clients_sampled"]) == 3 and int(r["clients_ok"]) == 2 and int(r["clients_failed"]) == 1, r
        assert r["failures"] in (f"timeout:{KILLED}", f"crash:{KILLED}"), r["failures"]
        assert r["applied"] in ("1", "True", "true"), r
    acc = [float(r["test_accuracy"]) for r in rows]
    assert acc[-1] > acc[0] + 0.3 and acc[-1] >= max(acc[:killed_after + 1]), acc
    print(f"\ndeployment: {ROUNDS} rounds in {elapsed:.0f} s, node {KILLED} killed after round {killed_after}; "
          f"accuracy {acc}; failures {[r['failures'] for r in rows]}")
