"""One-command blocking runner: ``python -m simulations.run PRESET [key=value ...] --out DIR``.

It runs exactly what ``flwr run . --stream`` runs (same app, same run config)
against a private simulation SuperLink that it starts on a free loopback port
(own ``FLWR_HOME``, no runtime dependency install, a private Ray temp folder)
and stops by PID when the run ends, fails or is interrupted. Success is judged
by the run's own ``summary.json`` (``status == "completed"``) and by
``flwr ls``, because ``flwr run --stream`` exits 0 even when the run failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
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

from fedsqueeze.config import PRESET_DIR, ConfigError, RunConfig, load_preset, parse_value, preset_names
from fedsqueeze.ledger import git_revision
from fedsqueeze.log import LOG_FORMAT_ENV, RECORDS, parse_record, render

__all__ = ["APP_DIR", "PRESET_DIR", "RunFailed", "resolve_overrides", "run_experiment", "private_superlink", "stop_tree",
           "descendants", "is_noise", "Progress", "display", "parse_cli", "main"]

APP_DIR = Path(__file__).resolve().parent.parent
#: Folder of ``out_dir`` where the clients of a run started here save their state (exact resume).
CLIENT_STATE_DIR = "client-state"

# Lines of Flower's, Ray's and torch's own output that say nothing about this run:
# an unconditional notice about a default this runner never uses (it always passes
# num-supernodes) with its resize hint, the actor pool's shutdown message, and a
# torch pytree registration warning (with the source line it quotes). Everything else,
# warnings included, is shown.
_NOISE = re.compile(
    r"default simulated SuperNodes changed from"
    r"|To change federation size, use the following command"
    r"|flwr federation simulation-config \S+ <superlink> --num-supernodes"
    r"|Manually terminating ClientAppActor"
    r"|KernelPreference"
    r"|^\s*_pytree\.register_constant\(|^\s*torch\.utils\._pytree\.register_constant\("
)


def is_noise(line: str) -> bool:
    """True for the few known lines of third-party output the runner hides (see ``_NOISE``)."""
    return bool(_NOISE.search(line))


class RunFailed(RuntimeError):
    """The Flower run did not complete (see the log lines in the message)."""


def resolve_overrides(preset: str | None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Merge a preset (name or TOML path) with ``key=value`` overrides and validate.

    Returns the kebab-case mapping of every key (defaults filled in).

    Raises
    ------
    ConfigError
        Unknown preset, unknown key, bad type or value.
    """
    merged: dict[str, Any] = {}
    if overrides and "preset" in overrides:
        raise ConfigError("the preset is the first argument here (python -m simulations.run PRESET ...), "
                          "not a preset= override")
    if preset:
        merged.update(load_preset(preset))
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


def _fmt_s(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"


class Progress:
    """Renders the ServerApp's log records; appends a round counter and ETA to its round lines.

    The ServerApp runs with ``FEDSQUEEZE_LOG_FORMAT=records`` (:mod:`fedsqueeze.log`):
    each of its log records reaches ``flwr run --stream``'s output as one JSON
    record, which the runner reads with :func:`fedsqueeze.log.parse_record`.
    A round line is the record with ``event == "round"`` (one per round; the
    other lines that mention a round, rejected replies and timeouts, are not).

    The ETA is the mean duration of the rounds seen so far (timed from the
    first round line, i.e. after setup and the initial evaluation) times the
    rounds left. With ``stop-at-accuracy`` the run may end sooner.

    Parameters
    ----------
    config
        The validated kebab-case run config (for the number of rounds).
    clock
        Monotonic seconds; injectable for tests.
    """

    def __init__(self, config: Mapping[str, Any], clock: Any = time.monotonic) -> None:
        cfg = RunConfig.from_mapping(config)
        stage_rounds = len(cfg.prune_levels) * cfg.finetune_rounds + cfg.qat_rounds if cfg.model_stages else 0
        self.total = cfg.num_server_rounds + stage_rounds
        self.clock = clock
        self.first: tuple[int, float] | None = None  # (round, time) of the first round line seen
        #: The ServerApp's own ERROR lines: the reason a run failed, kept apart from
        #: the output's tail, which Flower's traceback that follows can fill.
        self.errors: list[str] = []

    def annotate(self, record: Mapping[str, Any]) -> str:
        """The human line of a log record (``[fedsqueeze] ...``, newline-terminated).

        A round record gets ``[k/N rounds, elapsed, ETA]`` appended; an ERROR
        record is also kept in :attr:`errors`.
        """
        line = render(record["level"], record["message"])
        if record["level"] in ("ERROR", "CRITICAL"):
            self.errors.append(line)
        if record.get("event") != "round" or not isinstance(record.get("round"), int):
            return line + "\n"
        round_, now = record["round"], self.clock()
        if self.first is None:  # round 0, or the first round after a resume: the clock starts
            self.first = (round_, now)
            return line + "\n" if round_ == 0 else line + f"  [{round_}/{self.total} rounds]\n"
        timed, elapsed = round_ - self.first[0], now - self.first[1]
        left = max(self.total - round_, 0)
        eta = f"ETA {_fmt_s(elapsed / max(timed, 1) * left)}" if left else "last round"
        return line + f"  [{round_}/{self.total} rounds, {_fmt_s(elapsed)} elapsed, {eta}]\n"


def display(line: str, progress: Progress, quiet: bool = False) -> tuple[str, bool]:
    """How the runner shows one line of ``flwr run --stream``'s output: (text, whether to print it).

    A log record of the ServerApp (:func:`fedsqueeze.log.parse_record`) is
    rendered by ``progress`` and always shown. Any other line (Flower's, Ray's,
    a traceback) is shown as it is, unless ``quiet`` or it is known noise
    (:func:`is_noise`).
    """
    record = parse_record(line)
    if record is not None:
        return progress.annotate(record), True
    return line, not quiet and not is_noise(line)


def run_experiment(
    config: Mapping[str, Any],
    out_dir: Path,
    *,
    num_supernodes: int = 100,
    cpus_per_client: int = 1,
    gpus_per_client: float = 0.0,
    total_cpus: int | None = None,
    quiet: bool = False,
    timeout_s: float | None = None,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Run one federation through ``flwr run`` on a private SuperLink; return its summary.

    ``config`` is a validated kebab-case mapping (see :func:`resolve_overrides`);
    ``out-dir`` is set to ``out_dir``. Unless ``config`` names a
    ``client-state-dir``, the clients save their state to
    ``<out_dir>/client-state`` so that ``--resume`` continues the run exactly;
    that folder is deleted once the run has completed. With ``ray_address`` (``host:port`` of a
    running Ray cluster's GCS) the simulation attaches to that cluster instead
    of starting its own Ray: ``RAY_ADDRESS`` is set for the SuperLink (and so
    for the simulation process that calls ``ray.init``) and ``total_cpus`` is
    ignored, because Ray refuses resource arguments when connecting.
    ``gpus_per_client`` > 0 reserves that share of a GPU for each ClientApp
    (Flower's ``client-resources-num-gpus``: 0.25 = four clients per GPU); with
    ``device`` ``auto`` or ``cuda`` in the config the clients then train on it.

    Raises
    ------
    RunFailed
        The run did not finish with ``status == "completed"``.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {**config, "out-dir": str(out_dir)}
    own_state_dir = not config.get("client-state-dir")
    if own_state_dir:
        config["client-state-dir"] = str(out_dir / CLIENT_STATE_DIR)
    RunConfig.from_mapping(config)
    total_cpus = total_cpus or os.cpu_count() or 1
    become_subreaper()
    before = set(descendants(os.getpid()))
    progress = Progress(config)
    # Ray's session folder (logs, sockets, spilled objects) goes under a private RAY_TMPDIR
    # that is removed afterwards, instead of piling up in /tmp/ray. Short path: Ray puts unix
    # sockets in it. Not when attaching to a cluster: that session belongs to the cluster.
    ray_tmp = None if ray_address else tempfile.mkdtemp(prefix="fsqray-", dir="/tmp")
    tail: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="fedsqueeze-flwr-") as tmp:
            run_toml = Path(tmp) / "run-config.toml"
            run_toml.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in config.items()))
            rev = git_revision() or ""
            link_env = {"FEDSQUEEZE_GIT_REV": rev,
                        LOG_FORMAT_ENV: RECORDS,  # the ServerApp's progress as records this loop can read
                        # Ray warns on every start unless this is set; 0 keeps its current behaviour.
                        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": os.environ.get("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0"),
                        **({"RAY_ADDRESS": ray_address} if ray_address else {"RAY_TMPDIR": str(ray_tmp)})}
            federation = f"num-supernodes={num_supernodes} client-resources-num-cpus={cpus_per_client}"
            if gpus_per_client:
                federation += f" client-resources-num-gpus={gpus_per_client:g}"
            if not ray_address:
                federation += f" init-args-num-cpus={total_cpus}"
            with private_superlink(Path(tmp) / "flwr-home", link_env) as conn:
                cmd = [executable("flwr"), "run", str(APP_DIR), conn, "--stream", "--run-config", str(run_toml),
                       "--federation-config", federation]
                env = {**os.environ, "FLWR_HOME": str(Path(tmp) / "flwr-home"), "FLWR_DISABLE_UPDATE_CHECK": "1"}
                proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
                try:
                    assert proc.stdout is not None
                    for line in proc.stdout:
                        shown, visible = display(line, progress, quiet)
                        tail = (tail + [shown.rstrip()])[-40:]
                        if visible:
                            print(shown, end="", flush=True)
                    proc.wait(timeout_s)
                finally:
                    stop_tree(proc)
        reap_orphans(keep=before)
    finally:
        # After every process is stopped, so nothing re-creates files in it.
        if ray_tmp:
            shutil.rmtree(ray_tmp, ignore_errors=True)
    summary_path = out_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if summary.get("status") != "completed":
        reason = "".join(f"\n{e}" for e in progress.errors)
        raise RunFailed(f"run did not complete (summary status {summary.get('status')!r}){reason}\nlast output:\n"
                        + "\n".join(tail))
    if own_state_dir:  # only a resume reads them; up to 2 x (residual + model) per client
        shutil.rmtree(out_dir / CLIENT_STATE_DIR, ignore_errors=True)
    return summary


_DESCRIPTION = """\
Run one FedSqueeze federation through Flower's CLI (flwr run) on a private
local SuperLink, wait for it, stop everything it started, and print the result.

Give one preset and any number of key=value overrides, with the options, in
any order:
  python -m simulations.run stc num-server-rounds=10 --out runs/x model=seed-cnn
"""

_EPILOG = """\
Run-config keys: every key, its default and its meaning is listed in
[tool.flwr.app.config] of pyproject.toml (README, "Configuration").
Values are TOML; here a bare word is taken as a string (model=seed-cnn),
whereas flwr run --run-config needs strings quoted (model='seed-cnn').
Presets are fedsqueeze/presets/*.toml.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        # argparse's own wording ("unrecognized arguments: ...") does not say what is accepted.
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n"
                     f"Accepted: one preset ({', '.join(preset_names())}) or a .toml file, key=value run-config "
                     "overrides and the options above, in any order; see --help.\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m simulations.run", description=_DESCRIPTION, epilog=_EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("items", nargs="+", metavar="PRESET|key=value",
                        help=f"one preset ({', '.join(preset_names())}, or a .toml file of run-config keys) "
                             "and key=value run-config overrides")
    parser.add_argument("--out", required=True, help="results directory (metrics.csv, summary.json, checkpoint/)")
    parser.add_argument("--num-supernodes", type=int, default=100, metavar="N",
                        help="simulated clients (Flower SuperNodes), one MNIST partition each (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="only FedSqueeze's own progress lines")
    parser.add_argument("--ray-address", default=None,
                        help="attach the simulation to this running Ray cluster (GCS host:port)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint (same config)")
    parser.add_argument("--client-gpus", type=float, default=0.0, metavar="F",
                        help="share of a GPU reserved per client (Flower client-resources-num-gpus; 0.25 = four "
                             "clients per GPU); pair it with device='auto' or 'cuda' (default: %(default)s)")
    return parser


def parse_cli(argv: list[str] | None = None) -> tuple[argparse.Namespace, str, dict[str, Any]]:
    """Parse the command line: (options, preset, overrides). Positionals and options may interleave.

    Exits with status 2 and a message naming the problem on a bad command line.
    """
    parser = _parser()
    args, extra = parser.parse_known_intermixed_args(argv)
    unknown = [item for item in extra if item.startswith("-")]
    if unknown:
        parser.error(f"unknown option(s) {' '.join(unknown)}")
    args.items = [*args.items, *extra]
    presets = [item for item in args.items if "=" not in item]
    if len(presets) != 1:
        parser.error(f"expected exactly one preset, got {len(presets)}: {' '.join(presets) or '(none)'} "
                     "(overrides are key=value)")
    overrides: dict[str, Any] = {}
    for item in args.items:
        key, sep, value = item.partition("=")
        if sep:
            if not key.strip():
                parser.error(f"override {item!r} has no key")
            overrides[key.strip()] = parse_value(value.strip())
    if args.resume:
        overrides["resume"] = True
    if not (0 <= args.client_gpus < float("inf")):
        parser.error(f"--client-gpus must be >= 0, got {args.client_gpus:g}")
    return args, presets[0], overrides


def _target_text(targets: Mapping[str, Any], target: str = "0.99") -> str:
    hit = targets.get(target)
    return f"first >={target} at round {hit['round']}" if hit else f">={target} not reached"


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (see ``--help``)."""
    args, preset, overrides = parse_cli(argv)
    # SIGTERM must unwind through the finally blocks that stop the SuperLink.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        config = resolve_overrides(preset, overrides)
        summary = run_experiment(config, Path(args.out), num_supernodes=args.num_supernodes, quiet=args.quiet,
                                 ray_address=args.ray_address, gpus_per_client=args.client_gpus)
    except (ConfigError, RunFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{summary['name']}: final acc {summary['final_accuracy']:.4f} (best {summary['best_accuracy']:.4f}) "
          f"after {summary['rounds_completed']} rounds; uplink {summary['cum_uplink_bytes']:,} B, "
          f"downlink {summary['cum_downlink_bytes']:,} B; {_target_text(summary['targets'])}; "
          f"results in {Path(args.out).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
