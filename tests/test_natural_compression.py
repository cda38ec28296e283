"""The worked example ``examples/natural_compression``: a user stage registered through the ``plugins`` key.

It gets what every built-in stage gets: hand-computed bytes, round-trip
properties, the paper's variance bound, every truncation and single-byte
corruption, the seeded hostile-payload and hostile-reply fuzz of
``tests/test_fuzz.py``, and (slow) a real ``flwr run`` federation whose
ledger bytes are checked against re-serialized messages.
"""

from __future__ import annotations

import math
import sys
import textwrap

import numpy as np
import pytest
import torch

import compression
from compression import PayloadError, wire
from fedsqueeze.config import ConfigError, RunConfig
from fedsqueeze.plugins import PluginError, load_plugins, parse_plugins

PLUGIN = "examples.natural_compression"


def _forget_plugin() -> None:
    compression.STAGES["quant"].pop("natural", None)
    compression.KEYS.pop("natural-rounding", None)
    for name in [m for m in sys.modules if m == PLUGIN or m.startswith(PLUGIN + ".")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def natural():
    """The stage, registered by nothing but the ``plugins`` run-config key."""
    _forget_plugin()
    with pytest.raises(ConfigError, match="uplink.*natural"):
        RunConfig.from_mapping({"uplink": "quant=natural"})
    cfg = RunConfig.from_mapping({"plugins": PLUGIN, "uplink": "quant=natural", "downlink": "quant=natural"})
    assert cfg.plugins == PLUGIN and "natural" in compression.STAGES["quant"]
    return sys.modules[PLUGIN]


# ----------------------------------------------------------------------------- the plugins key


def test_plugins_key_errors_name_the_plugin(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="config key 'plugins': plugin 'no_such_module_xyz': module not found") as e:
        RunConfig.from_mapping({"plugins": "no_such_module_xyz"})
    assert isinstance(e.value.__cause__, PluginError) and "PYTHONPATH" in str(e.value)
    with pytest.raises(PluginError, match="'no_such_module_xyz': module not found"):
        load_plugins("no_such_module_xyz")
    with pytest.raises(PluginError, match="not a Python module name"):
        load_plugins("examples/natural_compression")
    (tmp_path / "fsq_bad_plugin.py").write_text(textwrap.dedent("""
        import compression

        class Clash(compression.QuantStage):
            name = "uniform"          # taken by a built-in stage

        compression.register_stage(Clash)
    """))
    (tmp_path / "fsq_broken_plugin.py").write_text("import not_installed_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=r"plugin 'fsq_bad_plugin' failed to import: RegistrationError: "
                                          r"quant=uniform is already registered"):
        load_plugins("fsq_bad_plugin")
    with pytest.raises(PluginError, match=r"plugin 'fsq_broken_plugin' failed to import: ModuleNotFoundError"):
        load_plugins(" fsq_broken_plugin ")
    assert isinstance(compression.get_stage("quant", "uniform"), compression.QuantStage)  # untouched
    assert parse_plugins(" a.b, ,c,a.b") == ("a.b", "c")


def test_client_imports_the_announced_plugins(natural, instruction):
    """The ClientApp loads plugins from its run config and from the server's train config."""
    # (the ``instruction`` fixture sets the task identity that Messages built outside the runtime need)
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from client import client_app

    _forget_plugin()
    ctx = Context(run_id=1, node_id=1, state=RecordDict(), run_config={}, node_config={})
    msg = Message(RecordDict({"config": ConfigRecord({"plugins": PLUGIN})}), 1, "train")
    client_app._load_plugins(msg, ctx)
    assert "natural" in compression.STAGES["quant"]
    _forget_plugin()
    ctx = Context(run_id=1, node_id=1, state=RecordDict(), run_config={"plugins": PLUGIN}, node_config={})
    client_app._load_plugins(Message(RecordDict({}), 1, "query"), ctx)
    assert "natural" in compression.STAGES["quant"]


def test_example_run_preset_resolves(natural):
    from pathlib import Path

    from simulations.run import resolve_overrides

    preset = Path(__file__).resolve().parent.parent / "examples" / "natural_compression" / "natural.toml"
    cfg = resolve_overrides(str(preset), {"num-server-rounds": 1})
    assert (cfg["plugins"], cfg["name"], cfg["num-server-rounds"]) == (PLUGIN, "natural", 1)
    assert compression.parse_spec(cfg["uplink"]).quant == "natural"


def test_example_ships_in_the_fab():
    import io
    import zipfile
    from pathlib import Path

    from flwr.cli.build import build_fab_from_disk

    names = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(Path(__file__).resolve().parent.parent))).namelist()
    assert {"examples/__init__.py", "examples/natural_compression/__init__.py",
            "examples/natural_compression/natural.toml"} <= set(names)


# ----------------------------------------------------------------------------- the coder


def test_hand_computed_block(natural):
    x = torch.tensor([1.0, -2.0, 0.0, 0.375, -0.3, 5e-39, 3.0, 0.25], dtype=torch.float32)
    p = compression.encode({"w": x}, "quant=natural,natural-rounding=nearest,min-numel=0")
    # signs 0,1,0,0,1,0,0,0 -> 0b00010010; exponents: 1 = 2^0 -> 127, 2 -> 128, 0 -> 0,
    # 0.375 -> tie between 0.25 and 0.5, nearest keeps 0.25 (125); 0.3 -> 0.25 (125);
    # 5e-39 < 2^-127 is nearer 0 than 2^-126 -> 0; 3 -> tie, 2 (128); 0.25 -> 125
    block = bytes([0b00010010, 127, 128, 0, 125, 125, 0, 128, 125])
    section = bytes([compression.DENSE]) + block
    assert p[-4 - len(section) - 4:-4] == len(section).to_bytes(4, "little") + section
    assert compression.decode(p)["w"].tolist() == [1.0, -2.0, 0.0, 0.25, -0.25, 0.0, 2.0, 0.25]


def test_nine_bits_per_value(natural):
    n = 10_000
    u = {"w": torch.randn(n)}
    # same header; the empty tensor's section is its length and layout byte only (raw, no values)
    block = len(compression.encode(u, "quant=natural")) - len(compression.encode({"w": torch.zeros(0)},
                                                                                   "quant=natural"))
    assert block == math.ceil(n / 8) + n  # sign bits and exponent bytes: 9 bits per value, padding aside


def _decoded(x: np.ndarray, seed: int, spec: str = "quant=natural,min-numel=0") -> np.ndarray:
    return compression.decode(compression.encode({"w": torch.from_numpy(x)}, spec, seed=seed))["w"].numpy()


def test_roundtrip_lands_on_a_neighbouring_power_of_two_and_is_stable(natural):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(5000) * 10.0 ** rng.uniform(-6, 2, 5000)).astype(np.float32)
    x[:10] = 0
    y = _decoded(x, seed=1)
    nz = x != 0
    lo = np.exp2(np.floor(np.log2(np.abs(x[nz].astype(np.float64)))))
    assert np.all(y[~nz] == 0) and np.all(np.sign(y[nz]) == np.sign(x[nz]))
    assert np.all((np.abs(y[nz]) == lo) | (np.abs(y[nz]) == 2 * lo))
    assert np.array_equal(_decoded(y, seed=2), y)  # powers of two are fixed points: exactly stable
    assert np.array_equal(_decoded(x, seed=1), y) and not np.array_equal(_decoded(x, seed=3), y)  # seeded


def test_variance_bound_one_eighth_and_unbiased(natural):
    """Paper: E C(x) = x and E (C(x) - x)^2 <= x^2 / 8, with equality at |x| = 4/3 * 2^a."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(2000) * 10.0 ** rng.uniform(-4, 1, 2000)).astype(np.float32)
    worst = (np.float32(4 / 3) * np.exp2(rng.integers(-20, 5, 500))).astype(np.float32)
    reps = 300
    for vec, tight in ((x, False), (worst, True)):
        draws = np.stack([_decoded(vec, seed=s) for s in range(reps)]).astype(np.float64)
        v64 = vec.astype(np.float64)
        # per value, E (C(x) - x)^2 = (2^(a+1) - |x|)(|x| - 2^a) <= x^2 / 8: exact, from the rounding probabilities
        lo = np.exp2(np.floor(np.log2(np.abs(v64))))
        exact = (2 * lo - np.abs(v64)) * (np.abs(v64) - lo)
        assert np.all(exact <= v64 ** 2 / 8 * (1 + 1e-12))
        ratio = ((draws - v64) ** 2).mean() / (v64 ** 2).mean()
        predicted = exact.sum() / (v64 ** 2).sum()
        assert ratio <= 1 / 8 * 1.03 and abs(ratio - predicted) <= 0.05 * predicted
        if tight:
            assert predicted == pytest.approx(1 / 8, rel=1e-6) and ratio == pytest.approx(1 / 8, rel=0.05)
        # unbiased: each value's mean within 5 sigma (sigma^2 <= x^2 / 8 / reps)
        assert np.all(np.abs(draws.mean(0) - v64) <= 5 * np.abs(v64) / math.sqrt(8 * reps) + 1e-30)


# ----------------------------------------------------------------------------- hostile payloads

NATURAL_PIPELINES = {
    "natural": "quant=natural",
    "natural-topk-ef": "prune=topk,keep=0.05,quant=natural,ef=true",
    "natural-structured-nearest": "prune=structured,keep=0.5,quant=natural,natural-rounding=nearest",
    "natural-zstd-elias": "prune=randk,keep=0.2,coder=elias,quant=natural,zstd=true",
}


@pytest.mark.parametrize("text", list(NATURAL_PIPELINES.values()))
def test_every_truncation_and_byte_corruption(natural, text):
    from tests.compression.test_robustness import (SMALL_SHAPES, check_every_single_byte_corruption,
                                                   check_every_truncation, make_update)

    payload = compression.encode(make_update(SMALL_SHAPES, seed=1), f"{text},min-numel=0")
    check_every_truncation(payload)
    check_every_single_byte_corruption(payload)


def test_targeted_block_rejections(natural):
    x = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float32)
    body = bytearray(compression.encode({"w": x}, "quant=natural,min-numel=0")[:-4])
    signs, exps = len(body) - 4, len(body) - 3  # 1 sign byte, 3 exponent bytes
    for index, value, message in [(exps, 255, "exponent 255"), (signs, 0b1000_0010, "padding"),
                                  (exps + 2, 0, None)]:
        bad = bytearray(body)
        bad[index] = value
        if message is None:  # a zero with the sign bit of 0.5 (clear): fine; set the sign too
            bad[signs] |= 0b100
            message = "zero value with its sign bit"
        with pytest.raises(PayloadError, match=message):
            compression.decode(wire.seal(bytes(bad)))


def test_seeded_decode_and_reply_fuzz(natural, instruction):
    """The fuzz engine of tests/test_fuzz.py on the plugin's pipelines (with two built-ins to splice with)."""
    from tests import test_fuzz as fz

    corpus = fz.build_corpus({**NATURAL_PIPELINES, "fp32": "fp32", "stc": "stc"})
    bad = fz.seeded_decode_fuzz(corpus, 2400, fz.SEED + 15, engine="decode-plugin")
    assert not bad, fz._fail_report("decode-plugin", bad)
    t = fz.TALLY["decode-plugin"]
    assert t["decoded finite same-shape"] > 0 and t["PayloadError"] > 1200
    bad = fz.seeded_screen_fuzz(corpus, instruction, 800, fz.SEED + 16, engine="screen-plugin")
    assert not bad, fz._fail_report("screen-plugin", bad)
    t = fz.TALLY["screen-plugin"]
    assert t["Accepted"] > 0 and sum(v for k, v in t.items() if k.startswith("Rejected:")) > 400


# ----------------------------------------------------------------------------- a real federation

FEDERATION = {
    "plugins": PLUGIN, "model": "seed-cnn", "num-server-rounds": 2, "fraction-train": 0.5,
    "min-available-nodes": 4, "local-epochs": 1, "batch-size": 20, "seed": 3,
    "uplink": "prune=topk,keep=0.1,quant=natural,ef=true", "downlink": "quant=natural", "downlink-mode": "delta",
}


@pytest.mark.slow
def test_flwr_run_federation_ledger_is_exact(natural, tmp_path):
    """``flwr run`` (simulations.run) with the plugin; the same run in-process re-serializes to its ledger.

    The in-process run is Flower's simulation engine too (Ray workers, which
    get the plugin only from the server's announcement: ``run_simulation``
    passes no run config), with a grid that records every message.
    """
    from simulations.run import run_experiment
    from tests.federation_harness import assert_same_ledgers, read_rows, run_inprocess
    from tests.test_federation import per_round_bytes

    summary = run_experiment(FEDERATION, tmp_path / "flwr", num_supernodes=4, quiet=True)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    assert summary["config"]["plugins"] == PLUGIN
    flwr_rows = read_rows(tmp_path / "flwr")
    # Every sampled client encoded with the plugin stage (uplink) and decoded it (downlink): none failed.
    assert all(int(r["clients_failed"]) == 0 for r in flwr_rows[1:])
    assert all(int(r["uplink_payload_bytes"]) > 0 for r in flwr_rows[1:])

    # The same federation with every message recorded: its ledger is the re-serialized messages, byte for byte...
    # simulations.run gives the clients a state directory (exact resume), which travels in every train
    # instruction: the same one here, so that the messages are the same size
    state_dir = {"client-state-dir": summary["config"]["client-state-dir"]}
    _, grid = run_inprocess({**FEDERATION, **state_dir}, tmp_path / "inprocess", num_supernodes=4)
    rows = read_rows(tmp_path / "inprocess")
    recomputed = per_round_bytes(grid)
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    for row, (down, up) in zip(rows, recomputed):
        assert int(row["downlink_bytes"]) == down and int(row["uplink_bytes"]) == up
    # ... and the flwr run's ledger is the same: payload bytes, accuracies, every other column exactly; wire
    # bytes up to the message envelope, whose run/node/message ids are varints that differ between the two
    # entry points (measured: 7-9 B per message).
    assert_same_ledgers(flwr_rows[1:], rows[1:], envelope_jitter=16)
    for key in ("uplink_bytes", "downlink_bytes"):  # the handshake row: one query and reply per node
        assert abs(int(flwr_rows[0][key]) - int(rows[0][key])) <= 16 * 4, key
    columns = ("round", "partition_id", "status", "uplink_payload_bytes", "downlink_payload_bytes")
    per_client = [[tuple(c[k] for k in columns) for c in read_rows(tmp_path / run, "clients.csv")]
                  for run in ("flwr", "inprocess")]
    assert per_client[0] == per_client[1] and len(per_client[0]) == 4
    # 9-bit values: the payloads beat the same top-k with 16-bit values (13.0x below float32 on a random update
    # of these shapes; natural 18.1x there)
    last = flwr_rows[-1]
    ratio = int(last["cum_uplink_dense_bytes"]) / int(last["cum_uplink_payload_bytes"])
    assert ratio > 14, f"topk 10 % + natural payloads only {ratio:.1f}x below float32"
