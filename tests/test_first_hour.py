"""What a new user meets first: the README's commands, presets through Flower, the CLI, the output.

The two slow tests run the README's Quickstart and Flower-way commands exactly as
printed there (parsed from README.md, so they cannot drift), with budget
overrides appended, and check they complete and leave no process behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from pathlib import Path

import pytest

from fedsqueeze.config import PRESET_DIR, ConfigError, RunConfig, expand_preset, preset_names
from fedsqueeze.ledger import COLUMNS
from fedsqueeze.log import RecordFormatter, event, parse_record
from simulations import run as runner
from tests.conftest import REPO, mnist_dir

README = REPO / "README.md"
BIN = Path(sys.executable).parent


def pyproject_defaults() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def readme_block(heading: str) -> str:
    """The first ```bash block after ``heading`` in README.md."""
    text = README.read_text()
    at = text.index(heading)
    match = re.search(r"```bash\n(.*?)```", text[at:], re.S)
    assert match, f"no bash block after {heading!r}"
    return match.group(1)


def logical_lines(block: str) -> list[str]:
    """Shell lines with backslash continuations joined."""
    return [ln.strip() for ln in block.replace("\\\n", " ").splitlines() if ln.strip()]


# ---------------------------------------------------------------- presets through the run config

def test_preset_key_fills_in_the_preset_and_explicit_keys_win():
    # 10 is also the pyproject default: given explicitly it must still beat the preset's 50.
    fused = {**pyproject_defaults(), "preset": "q8", "num-server-rounds": 10, "model": "seed-cnn"}
    cfg = RunConfig.from_mapping(expand_preset(fused, {"preset": "q8", "num-server-rounds": 10, "model": "seed-cnn"}))
    assert (cfg.preset, cfg.name, cfg.uplink, cfg.downlink, cfg.downlink_mode) == ("q8", "q8", "q8", "q8", "full")
    assert cfg.num_server_rounds == 10 and cfg.model == "seed-cnn"
    # Not given: the preset's value.
    cfg = RunConfig.from_mapping(expand_preset({**pyproject_defaults(), "preset": "q8"}, {"preset": "q8"}))
    assert cfg.num_server_rounds == 50


def test_preset_without_override_table_counts_non_default_keys_as_given():
    fused = {**pyproject_defaults(), "preset": "q8", "lr": 0.01}
    cfg = RunConfig.from_mapping(expand_preset(fused, None))
    assert cfg.uplink == "q8" and cfg.lr == 0.01 and cfg.num_server_rounds == 50


@pytest.mark.parametrize("preset", preset_names())
def test_preset_key_gives_the_same_config_as_the_runner(preset):
    via_flower = RunConfig.from_mapping(expand_preset({**pyproject_defaults(), "preset": preset}, {"preset": preset}))
    via_runner = runner.resolve_overrides(preset, {})
    assert {**via_flower.to_mapping(), "preset": ""} == via_runner


def test_unknown_preset_is_a_config_error_listing_the_bundled_ones():
    with pytest.raises(ConfigError, match=r"unknown preset 'stcc'; bundled presets: .*stc"):
        RunConfig.from_mapping({"preset": "stcc"})
    with pytest.raises(ConfigError, match="absolute"):
        RunConfig.from_mapping({"preset": "relative/missing.toml"})


def test_runner_rejects_preset_as_an_override():
    with pytest.raises(ConfigError, match="first argument"):
        runner.resolve_overrides("stc", {"preset": "q8"})


def test_server_app_reads_the_override_table_of_the_run():
    from server import server_app

    class Run:
        override_config = {"preset": "q8", "num-server-rounds": 10}
        run_id = 1

    class FakeGrid:
        run = Run()

    explicit = server_app.explicit_keys(FakeGrid())
    assert explicit == {"preset": "q8", "num-server-rounds": 10}
    cfg = server_app.resolve_config({**pyproject_defaults(), **explicit}, explicit)
    assert cfg.uplink == "q8" and cfg.num_server_rounds == 10
    Run.override_config = {}
    assert server_app.explicit_keys(FakeGrid()) is None


def test_presets_ship_as_package_data_and_in_the_fab():
    import io
    import zipfile

    from flwr.cli.build import build_fab_from_disk

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["tool"]["setuptools"]["package-data"]["fedsqueeze"] == ["presets/*.toml"]
    assert PRESET_DIR == REPO / "fedsqueeze" / "presets" and len(preset_names()) >= 12
    names = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(REPO))).namelist()
    assert {f"fedsqueeze/presets/{p}.toml" for p in preset_names()} <= set(names)


# ---------------------------------------------------------------- Flower's default federation

def _fake_simulation_grid(counts):
    """An InMemoryGrid whose node count follows ``counts`` (one value per call, last one repeats)."""
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    class Grid(InMemoryGrid):
        def __init__(self):  # no state: only get_node_ids is used
            self.calls = 0

        def get_node_ids(self):
            n = counts[min(self.calls, len(counts) - 1)]
            self.calls += 1
            return list(range(n))

    return Grid()


def test_two_supernode_simulation_gets_a_warning_naming_the_option():
    from server.server_app import default_federation_warning

    text = default_federation_warning(_fake_simulation_grid([2]), settle_s=0, sleep=lambda s: None)
    assert text and "2 SuperNodes" in text and '--federation-config "num-supernodes=100' in text
    assert default_federation_warning(_fake_simulation_grid([100]), settle_s=0, sleep=lambda s: None) is None


def test_federation_size_waits_for_the_registration_burst():
    from server.server_app import default_federation_warning, federation_size

    # Nodes appear after the ServerApp starts: 0, 0, then 2 of 100, then all.
    grid = _fake_simulation_grid([0, 0, 2, 100])
    assert federation_size(grid, settle_s=0, sleep=lambda s: None) == 100
    assert default_federation_warning(_fake_simulation_grid([0, 2, 100]), settle_s=0, sleep=lambda s: None) is None


def test_deployment_grid_with_two_nodes_is_not_warned_about():
    from server.server_app import default_federation_warning

    class DeploymentGrid:
        def get_node_ids(self):
            return [1, 2]

    assert default_federation_warning(DeploymentGrid(), settle_s=0, sleep=lambda s: None) is None


# ---------------------------------------------------------------- command line

@pytest.mark.parametrize("argv", [
    ["stc", "--out", "runs/x", "model=seed-cnn"],
    ["stc", "model=seed-cnn", "--out", "runs/x"],
    ["--out", "runs/x", "model=seed-cnn", "stc"],
    ["model=seed-cnn", "--out=runs/x", "stc", "--quiet"],
])
def test_options_and_overrides_in_any_order(argv):
    args, preset, overrides = runner.parse_cli(argv)
    assert preset == "stc" and overrides == {"model": "seed-cnn"} and args.out == "runs/x"


@pytest.mark.parametrize("argv, message", [
    (["stc", "--out", "x", "--outt", "y"], "unknown option(s) --outt"),
    (["stc", "q8", "--out", "x"], "expected exactly one preset, got 2: stc q8"),
    (["model=seed-cnn", "--out", "x"], "expected exactly one preset, got 0"),
    (["stc", "=3", "--out", "x"], "has no key"),
    (["stc", "model=seed-cnn"], "the following arguments are required: --out"),
])
def test_bad_command_lines_say_what_is_wrong(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        runner.parse_cli(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "in any order; see --help" in err


def test_help_points_to_the_config_reference_without_markup(capsys):
    with pytest.raises(SystemExit):
        runner.parse_cli(["--help"])
    out = capsys.readouterr().out
    assert "``" not in out and "[tool.flwr.app.config]" in out and "pyproject.toml" in out
    assert re.search(r"--num-supernodes N\s+simulated clients", out)
    assert "model='seed-cnn'" in out  # Flower's quoting rule


def test_final_line_says_not_reached():
    assert runner._target_text({"0.99": None}) == ">=0.99 not reached"
    assert runner._target_text({"0.99": {"round": 7}}) == "first >=0.99 at round 7"


# ---------------------------------------------------------------- output

@pytest.mark.parametrize("line", [
    "\x1b[93mWARNING \x1b[0m:   Since flwr 1.32, default simulated SuperNodes changed from 10 to 2.",
    "\x1b[92mINFO \x1b[0m:      To change federation size, use the following command:",
    "\x1b[92mINFO \x1b[0m:      \tflwr federation simulation-config @none/default <superlink> --num-supernodes <N>",
    "\x1b[93mWARNING \x1b[0m:   Manually terminating ClientAppActor",
    "W1201 15:13:40.201000 8172 torch/utils/_pytree.py:630] <enum 'KernelPreference'> is an Enum subclass and is "
    "now natively supported by torch.compile as an opaque value type.",
])
def test_known_third_party_noise_is_filtered(line):
    assert runner.is_noise(line)


@pytest.mark.parametrize("line", [
    "[fedsqueeze] round 1: acc=0.6367 loss=1.4231 ok=2/2 up=4,467B (x36.696)",
    "\x1b[93mWARNING \x1b[0m:   Some ClientApp failed: RuntimeError",
    "\x1b[92mINFO \x1b[0m:      Federation `@none/default` (100 simulated SuperNodes)",
    "/x/torch/nn/modules/module.py:12: UserWarning: something real",
    "[fedsqueeze] WARNING: this simulation has 2 SuperNodes, Flower's default",
])
def test_real_lines_and_warnings_are_kept(line):
    assert not runner.is_noise(line)


def served(message: str, level: int = logging.INFO, **fields) -> str:
    """A line as the ServerApp writes it under the runner (records form), round events with ``fields``."""
    extra = event("round", **fields) if fields else None
    record = logging.getLogger("fedsqueeze.server.federation").makeRecord(
        "fedsqueeze.server.federation", level, __file__, 1, message, None, None, extra=extra)
    return RecordFormatter().format(record) + "\n"


def test_progress_appends_rounds_and_eta():
    now = [100.0]
    progress = runner.Progress({"num-server-rounds": 4}, clock=lambda: now[0])

    def shown(line: str) -> str:
        text, visible = runner.display(line, progress, quiet=True)
        assert visible  # the ServerApp's records are shown also with --quiet
        return text

    assert shown(served("round 0: acc=0.1", round=0, phase="train")) == "[fedsqueeze] round 0: acc=0.1\n"
    now[0] = 110.0
    assert shown(served("round 1: acc=0.5", round=1, phase="train")) == (
        "[fedsqueeze] round 1: acc=0.5  [1/4 rounds, 10s elapsed, ETA 30s]\n")
    now[0] = 190.0
    assert shown(served("round 2: acc=0.7", round=2, phase="train")).endswith(
        "[2/4 rounds, 1m30s elapsed, ETA 1m30s]\n")
    # Records that mention a round but are not its summary do not count; warnings say so.
    assert shown(served("round 3: rejected node 7 (partition 2): norm: ...")) == (
        "[fedsqueeze] round 3: rejected node 7 (partition 2): norm: ...\n")
    assert shown(served("this simulation has 2 SuperNodes", logging.WARNING)) == (
        "[fedsqueeze] WARNING: this simulation has 2 SuperNodes\n")
    now[0] = 250.0
    assert shown(served("round 3 [finetune-0.5]: acc=0.8", round=3, phase="finetune-0.5")).endswith(
        "[3/4 rounds, 2m30s elapsed, ETA 50s]\n")
    # Other output is never taken for the ServerApp's: not even text that looks like an old round line.
    assert runner.display("[fedsqueeze] round 4: acc=0.9\n", progress, quiet=False) == (
        "[fedsqueeze] round 4: acc=0.9\n", True)
    assert runner.display("[fedsqueeze] round 4: acc=0.9\n", progress, quiet=True)[1] is False
    assert runner.display("other line\n", progress) == ("other line\n", True)
    assert runner.display("  Manually terminating ClientAppActor\n", progress)[1] is False
    assert progress.first == (0, 100.0)  # the clock still counts from round 0
    # A resumed run starts the clock at its first round line.
    resumed = runner.Progress({"num-server-rounds": 10}, clock=lambda: now[0])
    assert resumed.annotate(parse_record(served("round 6: acc=0.9", round=6))).endswith("[6/10 rounds]\n")
    now[0] = 260.0
    assert resumed.annotate(parse_record(served("round 7: acc=0.9", round=7))).endswith(
        "[7/10 rounds, 10s elapsed, ETA 30s]\n")
    # Model-compression rounds are planned too: 2 prune levels x 3 fine-tune rounds + 2 QAT rounds.
    staged = runner.Progress({"num-server-rounds": 4, "prune-targets": "0.5,0.8", "finetune-rounds": 3,
                              "qat-rounds": 2, "model-quant": "qat-int8"})
    assert staged.total == 4 + 6 + 2


# ---------------------------------------------------------------- README definitions

def test_readme_defines_every_ledger_column():
    text = README.read_text()
    table = text[text.index("## Results format"):text.index("`<out-dir>/summary.json`")]
    defined = set()
    for row in re.findall(r"^\| (.+?) \|", table, re.M):
        defined.update(re.findall(r"`([a-z_0-9]+)`", row))
    assert set(COLUMNS) <= defined, f"README does not define {sorted(set(COLUMNS) - defined)}"


def test_readme_flower_way_is_one_run_config_string_with_the_preset_key():
    (cmd,) = [ln for ln in logical_lines(readme_block("### The Flower way")) if ln.startswith("flwr run")]
    argv = shlex.split(cmd)
    run_configs = [argv[i + 1] for i, a in enumerate(argv) if a == "--run-config"]
    assert len(run_configs) == 1 and "preset='stc'" in run_configs[0] and not run_configs[0].endswith(".toml")
    assert "--federation-config" in argv


# ---------------------------------------------------------------- the README's commands, run for real

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _marked(marker: str) -> list[int]:
    """Live processes whose environment carries ``marker`` (everything a command spawned inherits it)."""
    needle = marker.encode()
    out = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):
            if needle in env.read_bytes() and int(env.parent.name) != os.getpid():
                out.append(int(env.parent.name))
    return out


def _kill(pids: list[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        time.sleep(2)


def _wait_gone(marker: str, timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := _marked(marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def _command_env(tmp: Path, marker: str) -> dict[str, str]:
    # Nothing the README does not set: no Flower or Ray settings of the calling shell (CI exports
    # RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO; the README's commands must not depend on that).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLWR_", "RAY_"))}
    env.update({
        "PATH": os.pathsep.join([str(BIN), env.get("PATH", "")]),  # `python`, `flwr` = this venv's, as after `activate`
        "PYTHONPATH": str(REPO),
        "FSQ_TEST_MARKER": marker,
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    })
    if mnist_dir():
        env["FEDSQUEEZE_DATA_DIR"] = mnist_dir()
    return env


@pytest.mark.slow
def test_readme_quickstart_command_runs_and_cleans_up(tmp_path):
    (cmd,) = [ln for ln in logical_lines(readme_block("## Quickstart")) if ln.startswith("python -m simulations.run")]
    budget = " model=seed-cnn num-server-rounds=1 --num-supernodes 10"
    marker = f"fsq-quickstart-{uuid.uuid4().hex}"
    ray_dirs_before = set(Path("/tmp").glob("fsqray-*"))
    proc = subprocess.run(["bash", "-c", cmd + budget], cwd=tmp_path, env=_command_env(tmp_path, marker),
                          capture_output=True, text=True, timeout=900)
    try:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        out_dir = tmp_path / "runs" / "quickstart"
        summary = json.loads((out_dir / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["rounds_completed"] == 1
        assert summary["config"]["model"] == "seed-cnn" and summary["config"]["uplink"] == "stc"
        lines = proc.stdout.splitlines()
        assert lines[-1].startswith("stc: final acc") and "not reached" in lines[-1]
        assert any(re.search(r"\[fedsqueeze\] round 1: .*\[1/1 rounds, \S+ elapsed, last round\]", ln) for ln in lines)
        assert any("[fedsqueeze] data: mnist " in ln for ln in lines)
        for noise in ("default simulated SuperNodes changed", "Manually terminating", "KernelPreference",
                      "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"):
            assert noise not in proc.stdout + proc.stderr, noise
        assert set(Path("/tmp").glob("fsqray-*")) - ray_dirs_before == set()  # Ray's session folder removed
        assert _wait_gone(marker) == []
    finally:
        _kill(_marked(marker))


@pytest.mark.slow
def test_readme_flower_way_command_runs_and_cleans_up(tmp_path):
    lines = logical_lines(readme_block("### The Flower way"))
    (cmd,) = [ln for ln in lines if ln.startswith("flwr run")]
    out_dir = tmp_path / "out"
    # Budget appended as a second --run-config / --federation-config: Flower applies them after the README's.
    budget = (f" --run-config \"model='seed-cnn' num-server-rounds=1 local-epochs=1 out-dir='{out_dir}'\""
              " --federation-config \"num-supernodes=10\"")
    script = "\n".join(ln if ln != cmd else cmd + budget for ln in lines)
    marker = f"fsq-flwr-way-{uuid.uuid4().hex}"
    env = _command_env(tmp_path, marker)
    http_port, control_port = _free_port(), _free_port()
    ray_tmp = tempfile.mkdtemp(prefix="fsqray-", dir="/tmp")
    env.update({"FLWR_HOME": str(tmp_path / "flwr-home"),  # its own local SuperLink state, not ~/.flwr
                "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port),
                "FLWR_LOCAL_CONTROL_API_PORT": str(control_port),
                "RAY_TMPDIR": ray_tmp})
    try:
        proc = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=900)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-4000:]
        summary = json.loads((out_dir / "summary.json").read_text())
        assert summary["status"] == "completed", output[-4000:]
        cfg = summary["config"]
        # The preset key was expanded (name, pipelines from stc.toml); explicit keys won.
        assert (cfg["preset"], cfg["name"], cfg["uplink"], cfg["downlink"]) == ("stc", "stc", "stc", "stc")
        assert (cfg["num-server-rounds"], cfg["model"], summary["rounds_completed"]) == (1, "seed-cnn", 1)
        assert ("[fedsqueeze] preset 'stc' applied; given explicitly: local-epochs, model, num-server-rounds, out-dir"
                in output) and "WARNING: this simulation has 2" not in output
        for noise in ("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "KernelPreference"):
            assert noise not in output, noise
        run_id = re.search(r"Successfully started run (\d+)", output).group(1)
        ls = subprocess.run([str(BIN / "flwr"), "ls", "--run-id", run_id, "--format", "json"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
        assert json.loads(ls.stdout)["runs"][0]["status"] == "finished:completed", ls.stdout + ls.stderr
        # Stop the local SuperLink by the PID listening on its port, as the README says.
        ss = subprocess.run(["ss", "-ltnp", f"sport = :{http_port}"], capture_output=True, text=True)
        pids = {int(p) for p in re.findall(r"pid=(\d+)", ss.stdout)}
        assert pids, ss.stdout
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        assert _wait_gone(marker) == [], "processes left after stopping the local SuperLink"
    finally:
        _kill(_marked(marker))
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
def test_empty_data_dir_stops_the_run_with_the_reason(tmp_path):
    (tmp_path / "empty").mkdir()
    config = runner.resolve_overrides("stc", {"model": "seed-cnn", "num-server-rounds": 1, "local-epochs": 1,
                                              "data-dir": str(tmp_path / "empty")})
    with pytest.raises(runner.RunFailed, match=r"\[fedsqueeze\] ERROR: dataset 'mnist': data-dir .*empty is empty"):
        runner.run_experiment(config, tmp_path / "out", num_supernodes=4, quiet=True)
    assert not (tmp_path / "out" / "metrics.csv").exists()  # nothing ran on other data
