"""A simulation attached to an externally started Ray cluster (the multi-machine setup, on one box).

The test starts its own single-node Ray head, isolated from any other Ray on
the machine (own ``--temp-dir``, so ``ray_current_cluster`` is not the
machine-wide one; free ports for every Ray service; loopback only)::

    ray start --head --block --node-ip-address 127.0.0.1 --port P --num-cpus 2 \
        --include-dashboard=false --disable-usage-stats --temp-dir /tmp/fsqray-XXXX  (+ free service ports)

then runs ``simulations.run.run_experiment(..., ray_address="127.0.0.1:P")``
(CLI: ``python -m simulations.run PRESET ... --ray-address 127.0.0.1:P``):
the private simulation SuperLink gets ``RAY_ADDRESS`` and the federation
config omits ``init-args-num-cpus``, which Ray refuses when connecting.

Evidence that the external cluster did the work: (1) while the run is live,
no Ray daemon (gcs_server / raylet) appears among this test's descendants
outside the ``ray start`` tree, while ``ray::ClientAppActor`` workers do
appear inside it; (2) afterwards the cluster's GCS job table lists the
``flwr-simulation`` driver as a finished job. ``ray start`` runs with
``--block`` in its own session and is stopped by process group (never
``ray stop``, which would stop every Ray instance on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from simulations.run import descendants, resolve_overrides, run_experiment
from tests.conftest import mnist_dir
from tests.test_deployment import cmdline, free_port, stop_group

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
# A private Ray shows as its daemons' executables. Match argv[0] only: a worker's arguments
# name the raylet's socket too (".../sockets/raylet"), and a worker the cluster spawned can be
# re-parented to this (subreaper) test process when its launcher exits.
RAY_DAEMONS = ("gcs_server", "raylet")


class RayHead:
    """A ``ray start --head --block`` process we own, in its own session."""

    def __init__(self) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="fsqray-", dir="/tmp")  # short: Ray puts unix sockets in it
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = Path(self.temp_dir) / "ray-start.log"
        # Every Ray service on a free port: defaults (8265, 52365, 10001, ...) collide with other Rays here.
        ports = {opt: free_port() for opt in (
            "--node-manager-port", "--object-manager-port", "--ray-client-server-port", "--dashboard-port",
            "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
            "--metrics-export-port")}
        self.argv = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                     "--port", str(self.port), "--num-cpus", "2", "--include-dashboard=false",
                     "--disable-usage-stats", "--temp-dir", self.temp_dir,
                     *[x for opt, p in ports.items() for x in (opt, str(p))]]
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] = "0"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout: float = 120.0) -> None:
        marker = Path(self.temp_dir) / "ray_current_cluster"  # written by `ray start` once the head is up
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}:\n{self.log()}")
            if marker.exists() and marker.read_text().strip():
                return
            time.sleep(0.5)
        raise TimeoutError(f"Ray head not ready within {timeout:.0f} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def tree(self) -> set[int]:
        return {self.proc.pid, *descendants(self.proc.pid)}

    def query(self) -> dict:
        """Nodes, resources and the GCS job table, read by a short-lived driver of our own."""
        code = ("import json, ray; from ray._private import state\n"
                f"ray.init(address={self.address!r}, logging_level='ERROR', log_to_driver=False)\n"
                "print('@@' + json.dumps({'nodes': ray.nodes(), 'resources': ray.cluster_resources(),"
                " 'jobs': state.jobs()}, default=str))\n"
                "ray.shutdown()\n")
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                             start_new_session=True)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("@@")), None)
        assert line, f"cluster query failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
        return json.loads(line[2:])

    def stop(self) -> None:
        spawned = self.tree()
        stop_group(self.proc, signal.SIGTERM, timeout=30)  # --block: ray start tears its node down on SIGTERM
        for pid in spawned - {self.proc.pid}:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture
def ray_head():
    head = RayHead()
    try:
        head.wait_ready()
        yield head
    finally:
        head.stop()


class TreeWatcher(threading.Thread):
    """Samples this test's process tree: Ray daemons outside the cluster, actor workers inside it."""

    def __init__(self, head: RayHead):
        super().__init__(daemon=True)
        self.head = head
        self.stop_event = threading.Event()
        self.private_ray: set[str] = set()
        self.actors_in_cluster: set[int] = set()
        self.samples = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            cluster = self.head.tree()
            for pid in descendants(os.getpid()):
                cmd = cmdline(pid)
                if pid in cluster:
                    if "ClientAppActor" in cmd:
                        self.actors_in_cluster.add(pid)
                elif os.path.basename(cmd.split(" ", 1)[0]) in RAY_DAEMONS:
                    self.private_ray.add(cmd[:160])
            self.samples += 1
            self.stop_event.wait(1.0)


def test_simulation_attached_to_external_ray_cluster(ray_head, tmp_path):
    before = ray_head.query()
    assert len(before["nodes"]) == 1 and before["resources"].get("CPU") == 2.0, before["resources"]
    config = resolve_overrides(None, {
        "name": "ray-cluster", "model": "seed-cnn", "uplink": "q8", "downlink": "fp32", "downlink-mode": "full",
        "num-server-rounds": 2, "local-epochs": 1, "batch-size": 32, "fraction-train": 0.2, "min-train-nodes": 2,
        "min-available-nodes": 10, "data-dir": mnist_dir() or "",
    })
    watcher = TreeWatcher(ray_head)
    watcher.start()
    t0 = time.monotonic()
    try:
        summary = run_experiment(config, tmp_path / "out", num_supernodes=10, ray_address=ray_head.address,
                                 quiet=True, timeout_s=600)
    finally:
        watcher.stop_event.set()
        watcher.join(10)
    elapsed = time.monotonic() - t0

    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    assert summary["final_accuracy"] > 0.5, summary["final_accuracy"]
    assert watcher.samples >= 3
    assert not watcher.private_ray, f"the run started its own Ray: {sorted(watcher.private_ray)}"
    assert watcher.actors_in_cluster, "no ClientAppActor ever ran in the external cluster"

    after = ray_head.query()
    known = {j["JobID"] for j in before["jobs"]}
    new_jobs = [j for j in after["jobs"] if j["JobID"] not in known and "flwr-simulation" in str(j["Entrypoint"])]
    assert len(new_jobs) == 1, after["jobs"]
    assert new_jobs[0]["IsDead"] in (True, "True"), new_jobs[0]  # the driver disconnected when the run ended
    assert len(after["nodes"]) == 1 and after["nodes"][0]["Alive"]  # the cluster outlives the run
    print(f"\nray cluster: run completed in {elapsed:.0f} s on {ray_head.address}, accuracy "
          f"{summary['final_accuracy']:.4f}; {len(watcher.actors_in_cluster)} actor processes in the cluster, "
          f"none outside; job {new_jobs[0]['JobID']} ({new_jobs[0]['Entrypoint'][:60]})")
