"""benchmarks/time_to_accuracy.py on two hand-made run directories: times and the crossover by hand."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from fedsqueeze.netsim import CLIENT_COLUMNS

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tta():
    spec = importlib.util.spec_from_file_location("time_to_accuracy", REPO / "benchmarks" / "time_to_accuracy.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


def make_run(root: Path, name: str, accs: list[float], nbytes: int, extra_config: dict | None = None) -> Path:
    """Round 0 + len(accs) - 1 training rounds; one client (partition 0) per round, nbytes each way, 1 s train."""
    run = root / name
    run.mkdir()
    with open(run / "metrics.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["round", "test_accuracy", "cum_uplink_bytes", "cum_downlink_bytes"])
        for rnd, acc in enumerate(accs):
            w.writerow([rnd, acc, rnd * nbytes, rnd * nbytes])
    with open(run / "clients.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CLIENT_COLUMNS)
        w.writeheader()
        for rnd in range(1, len(accs)):
            w.writerow({"round": rnd, "partition_id": 0, "node_id": 11, "status": "ok", "num_examples": 600,
                        "local_epochs": 1, "downlink_bytes": nbytes, "uplink_bytes": nbytes,
                        "downlink_payload_bytes": nbytes - 100, "uplink_payload_bytes": nbytes - 100,
                        "train_s": 1.0})
    config = {"model": "mlp-2nn", "seed": 0, "local-epochs": 1, **(extra_config or {})}
    (run / "summary.json").write_text(json.dumps({"name": name, "config": config, "num_params": 199_210}))
    return run


@pytest.fixture()
def runs(tmp_path):
    trace = tmp_path / "trace.csv"
    # One client: 8 Mbit/s both ways (1 MB/s), 100 ms RTT, reference speed.
    trace.write_text("client_id,down_mbps,up_mbps,rtt_ms,compute_factor,availability\n0,8,8,100,1,1\n")
    fp32 = make_run(tmp_path, "fp32", [0.1, 0.9, 0.97, 0.99], 1_000_000)
    comp = make_run(tmp_path, "comp", [0.1, 0.8, 0.9, 0.95, 0.97, 0.98], 10_000)
    return tmp_path, trace, fp32, comp


def test_times_and_crossover_by_hand(tta, runs):
    root, trace, fp32_dir, comp_dir = runs
    fp32, comp = tta.load_run(fp32_dir), tta.load_run(comp_dir)
    setting = tta.Setting(f"trace:{trace}", num_clients=1, compute="measured")
    # A round at bandwidth scale s: (0.1 + B/(1e6 s)) + 1 + (0.1 + B/(1e6 s)) = 1.2 + 2B/(1e6 s).
    # fp32 (B = 1e6) reaches 0.97 at round 2: 2 (1.2 + 2/s); comp (B = 1e4) at round 4: 4 (1.2 + 0.02/s).
    assert tta.time_to_target(fp32, setting, 0.97) == (2, pytest.approx(6.4))
    assert tta.time_to_target(comp, setting, 0.97) == (4, pytest.approx(4.88))
    assert tta.time_to_target(fp32, setting, 0.97, 4.0)[1] == pytest.approx(2 * (1.2 + 0.5))
    assert tta.time_to_target(comp, setting, 0.99) is None
    # Equal when 2.4 + 4/s = 4.8 + 0.08/s  ->  s = 3.92 / 2.4.
    scales = tta.parse_scales("-6:8")
    xs = tta.crossovers(fp32, comp, setting, 0.97, scales)
    assert xs == [pytest.approx(3.92 / 2.4, rel=1e-9)]
    assert tta.crossovers(fp32, comp, setting, 0.99, scales) is None  # comp never reaches 0.99
    assert tta.crossovers(fp32, comp, setting, 0.97, [4.0, 8.0, 16.0]) == []  # none in range


def test_report_files(tta, runs):
    root, trace, fp32_dir, comp_dir = runs
    out = root / "out"
    rc = tta.main([str(comp_dir), "--baseline", str(fp32_dir), "--out", str(out), "--profiles", f"trace:{trace}",
                   "--compute", "measured", "--targets", "0.97,0.99", "--scales=-6:8"])
    assert rc == 0
    res = json.loads((out / "crossover.json").read_text())
    (spec,) = res["sets"]
    assert res["sets"][spec]["crossover"]["0.97"]["comp"] == [pytest.approx(3.92 / 2.4, rel=1e-9)]
    assert res["sets"][spec]["crossover"]["0.99"]["comp"] is None
    text = (out / "report.md").read_text()
    assert "crossover at scale **1.633**" in text and "comp is faster below it" in text
    assert "| fp32 | 2 | 3 | 6.4 s | 9.6 s |" in text
    assert (out / f"accuracy_vs_sim_time_{tta._slug(spec)}.png").stat().st_size > 1000
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert len(rows) == 2 * 15 * 2  # targets x scales x runs


def test_flops_mode_uses_the_model_and_profile_set(tta, runs):
    root, trace, fp32_dir, comp_dir = runs
    fp32 = tta.load_run(fp32_dir)
    setting = tta.Setting(f"trace:{trace}", 1, compute="flops", reference_flops=1e9)
    # mlp-2nn: 6 x (784*200 + 200*200 + 200*10) = 1,192,800 FLOPs per example; 600 examples x 1 epoch / 1e9 FLOP/s
    compute = 600 * 6 * (784 * 200 + 200 * 200 + 200 * 10) / 1e9
    assert tta.time_to_target(fp32, setting, 0.97)[1] == pytest.approx(2 * (0.2 + 2.0 + compute))
    host = tta.netsim.HOST_1THREAD_TRAIN_FLOPS  # a trace's reference device unless overridden
    default = tta.time_to_target(fp32, tta.Setting(f"trace:{trace}", 1, compute="flops"), 0.97)[1]
    assert default == pytest.approx(2 * (0.2 + 2.0 + 600 * 1_192_800 / host))
    registered = tta.Setting("home-broadband", 1, compute="flops")
    assert tta.time_to_target(fp32, registered, 0.97)[1] > 0


def test_refuses_runs_with_deadline_and_missing_files(tta, runs, tmp_path):
    root, trace, fp32_dir, comp_dir = runs
    late = make_run(root, "late", [0.1, 0.97], 1000, {"round-deadline": 30.0})
    out = root / "o2"
    assert tta.main([str(late), "--baseline", str(fp32_dir), "--out", str(out), "--profiles", f"trace:{trace}",
                     "--compute", "measured", "--no-plots"]) == 2
    (comp_dir / "clients.csv").unlink()
    with pytest.raises(tta.RunError, match="no clients.csv"):
        tta.load_run(comp_dir)
