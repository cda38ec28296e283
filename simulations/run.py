"""One-command blocking runner: ``python -m simulations.run PRESET [key=value ...] --out DIR``.

It runs exactly what ``flwr run . --stream`` runs — same app, same run config —
against a private simulation SuperLink that it starts on a free loopback port
(own ``FLWR_HOME``, no runtime dependency install) and stops by PID when the
run ends, fails or is interrupted. Success is judged by the run's own
``summary.json`` (``status == "completed"``) and by ``flwr ls``, because
``flwr run --stream`` exits 0 even when the run failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from fedsqueeze.config import ConfigError, RunConfig, load_toml_overrides, parse_value
from fedsqueeze.ledger import git_revision

__all__ = ["APP_DIR", "PRESET_DIR", "RunFailed", "resolve_overrides", "run_experiment", "private_superlink", "stop_tree",
           "descendants", "main"]

APP_DIR = Path(__file__).resolve().parent.parent
PRESET_DIR = Path(__file__).resolve().parent / "presets"


class RunFailed(RuntimeError):
    """The Flower run did not complete (see the log lines in the message)."""


def preset_names() -> list[str]:
    """Names of the bundled presets (``simulations/presets/*.toml``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def resolve_overrides(preset: str | None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Merge a preset (name or TOML path) with ``key=value`` overrides and validate.

    Returns the kebab-case mapping of every key (defaults filled in).

    Raises
    ------
    ConfigError
        Unknown preset, unknown key, bad type or value.
    """
    merged: dict[str, Any] = {}
    if preset:
        path = Path(preset)
        if not path.suffix:
            path = PRESET_DIR / f"{preset}.toml"
        if not path.is_file():
            raise ConfigError(f"unknown preset {preset!r}; bundled presets: {', '.join(preset_names())}")
        merged.update(load_toml_overrides(path))
    merged.update(overrides or {})
    return RunConfig.from_mapping(merged).to_mapping()


def executable(name: str) -> str:
    """A console script of this environment (beside ``sys.executable``), else from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """PIDs of every live descendant of ``pid`` (from /proc; Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def stop_tree(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Stop ``proc`` and everything it spawned (SIGTERM, then SIGKILL).

    Flower's SuperLink starts its SuperExec (and through it the ServerApp and
    Ray) in new sessions, so killing the process group is not enough; the
    tree is collected from /proc before anything is signalled.
    """
    pids = [proc.pid, *descendants(proc.pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 5)
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.2)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.1)
        if not any(_alive(p) for p in pids):
            return


def become_subreaper() -> None:
    """Adopt orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``).

    Ray's helper processes outlive their parents; as a subreaper this process
    inherits them instead of init, so :func:`reap_orphans` can stop them.
    """
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def reap_orphans(keep: set[int] | frozenset[int] = frozenset()) -> None:
    """Stop descendants of this process that appeared during a run.

    Processes in ``keep`` (those that predate the run) and their subtrees are
    spared, e.g. a Ray cluster the caller started and attached the run to.
    """
    me = os.getpid()
    for pid in set(descendants(me)) - set(keep):
        ancestor = _parent(pid)
        while ancestor not in (None, me, 1, 0) and ancestor not in keep:
            ancestor = _parent(ancestor)
        if ancestor in keep:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@contextlib.contextmanager
def private_superlink(flwr_home: Path, extra_env: Mapping[str, str] | None = None) -> Iterator[str]:
    """Start ``flower-superlink --simulation`` on a free port; yield the connection name.

    ``flwr_home`` gets a ``config.toml`` naming the connection; everything the
    SuperLink spawns (ServerApp, simulation, Ray) is in its process group and
    is stopped with it.
    """
    port = _free_port()
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "fedsqueeze"\n\n[superlink.fedsqueeze]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = {**os.environ, **(extra_env or {}), "FLWR_HOME": str(flwr_home),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_DISABLE_UPDATE_CHECK": "1",
           # Ray nices its workers to 15 by default: the clients, i.e. the actual
           # training, would then lose the CPU to anything else on the machine.
           "RAY_worker_niceness": os.environ.get("RAY_worker_niceness", "0"),
           # The SuperLink spawns flower-superexec & co. by name: use this environment's.
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    log = open(flwr_home / "superlink.log", "wb")
    proc = subprocess.Popen(
        [executable("flower-superlink"), "--insecure", "--simulation",
         "--isolation", "subprocess", "--host", "127.0.0.1", "--port", str(port),
         "--disable-runtime-dependency-installation"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RunFailed(f"flower-superlink exited with {proc.returncode}; see {flwr_home / 'superlink.log'}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).is_success:
                    break
            if time.monotonic() > deadline:
                raise RunFailed("flower-superlink did not become healthy within 60 s")
            time.sleep(0.3)
        yield "fedsqueeze"
    finally:
        stop_tree(proc)
        log.close()


def _toml_value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, str) else ("true" if v is True else "false" if v is False else repr(v))


def run_experiment(
    config: Mapping[str, Any],
    out_dir: Path,
    *,
    num_supernodes: int = 100,
    cpus_per_client: int = 1,
    total_cpus: int | None = None,
    quiet: bool = False,
    timeout_s: float | None = None,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Run one federation through ``flwr run`` on a private SuperLink; return its summary.

    ``config`` is a validated kebab-case mapping (see :func:`resolve_overrides`);
    ``out-dir`` is set to ``out_dir``. With ``ray_address`` (``host:port`` of a
    running Ray cluster's GCS) the simulation attaches to that cluster instead
    of starting its own Ray: ``RAY_ADDRESS`` is set for the SuperLink (and so
    for the simulation process that calls ``ray.init``) and ``total_cpus`` is
    ignored, because Ray refuses resource arguments when connecting.

    Raises
    ------
    RunFailed
        The run did not finish with ``status == "completed"``.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {**config, "out-dir": str(out_dir)}
    RunConfig.from_mapping(config)
    total_cpus = total_cpus or os.cpu_count() or 1
    become_subreaper()
    before = set(descendants(os.getpid()))
    with tempfile.TemporaryDirectory(prefix="fedsqueeze-flwr-") as tmp:
        run_toml = Path(tmp) / "run-config.toml"
        run_toml.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in config.items()))
        rev = git_revision() or ""
        link_env = {"FEDSQUEEZE_GIT_REV": rev, **({"RAY_ADDRESS": ray_address} if ray_address else {})}
        federation = f"num-supernodes={num_supernodes} client-resources-num-cpus={cpus_per_client}"
        if not ray_address:
            federation += f" init-args-num-cpus={total_cpus}"
        with private_superlink(Path(tmp) / "flwr-home", link_env) as conn:
            cmd = [executable("flwr"), "run", str(APP_DIR), conn, "--stream", "--run-config", str(run_toml),
                   "--federation-config", federation]
            env = {**os.environ, "FLWR_HOME": str(Path(tmp) / "flwr-home"), "FLWR_DISABLE_UPDATE_CHECK": "1"}
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True)
            tail: list[str] = []
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    tail = (tail + [line.rstrip()])[-40:]
                    if not quiet or line.startswith("[fedsqueeze]"):
                        print(line, end="", flush=True)
                proc.wait(timeout_s)
            finally:
                stop_tree(proc)
    reap_orphans(keep=before)
    summary_path = out_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if summary.get("status") != "completed":
        raise RunFailed(f"run did not complete (summary status {summary.get('status')!r}); last output:\n"
                        + "\n".join(tail))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.run", description=__doc__.splitlines()[0])
    parser.add_argument("preset", help=f"preset name ({', '.join(preset_names())}) or a TOML file")
    parser.add_argument("overrides", nargs="*", help="key=value run-config overrides")
    parser.add_argument("--out", required=True, help="results directory (metrics.csv, summary.json)")
    parser.add_argument("--num-supernodes", type=int, default=100)
    parser.add_argument("--quiet", action="store_true", help="only FedSqueeze's own progress lines")
    parser.add_argument("--ray-address", default=None,
                        help="attach the simulation to this running Ray cluster (GCS host:port)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint (same config)")
    args = parser.parse_args(argv)
    # SIGTERM must unwind through the finally blocks that stop the SuperLink.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    overrides = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"override {item!r} is not key=value")
        overrides[key.strip()] = parse_value(value.strip())
    if args.resume:
        overrides["resume"] = True
    try:
        config = resolve_overrides(args.preset, overrides)
        summary = run_experiment(config, Path(args.out), num_supernodes=args.num_supernodes, quiet=args.quiet,
                                 ray_address=args.ray_address)
    except (ConfigError, RunFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t = summary["targets"]
    print(f"{summary['name']}: final acc {summary['final_accuracy']:.4f} (best {summary['best_accuracy']:.4f}) "
          f"after {summary['rounds_completed']} rounds; uplink {summary['cum_uplink_bytes']:,} B, "
          f"downlink {summary['cum_downlink_bytes']:,} B; first >=0.99 at round "
          f"{t['0.99']['round'] if t['0.99'] else 'never'}; results in {Path(args.out).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
