"""benchmarks.catchup: catch-up codecs measured on a broadcast history against the chain."""

from __future__ import annotations

import pytest

import compression
from benchmarks import catchup
from tests.test_catchup import broadcaster, walk

TERNARY = "prune=topk,keep=0.03,quant=ternary,coder=golomb"


def history(rounds: int = 10) -> list[bytes]:
    ws = walk(rounds)
    bc = broadcaster(None, w0=ws[0])
    for r in range(1, rounds + 1):
        bc.advance(ws[r], r)
    return bc.history


def test_measure_counts_the_chain_the_support_and_the_error_of_each_codec():
    hist = history()
    rows = catchup.measure(hist, {"fp32": "fp32", "ternary": TERNARY}, ends=[10, 12], gaps=[1, 4, 11])
    assert {(r.end, r.gap) for r in rows} == {(10, 1), (10, 4)}  # gap > end and end > history skipped
    by = {(r.gap, r.codec): r for r in rows}
    assert by[(4, "fp32")].chain_bytes == sum(len(p) for p in hist[6:10])
    last = compression.decode(hist[9])
    assert by[(1, "fp32")].support == sum(int((v != 0).sum()) for v in last.values())
    assert by[(4, "fp32")].support > by[(1, "fp32")].support
    assert by[(4, "fp32")].nmse == 0.0  # float32 carries the accumulated update exactly
    t = by[(4, "ternary")]
    assert 0 < t.nmse < 1 and t.catchup_bytes < t.chain_bytes
    # the ternary catch-up's NMSE, recomputed by hand from an independent encode
    total = {k: sum(compression.decode(p)[k] for p in hist[6:10]) for k in last}
    got = compression.decode(compression.encode(total, TERNARY, round=10, seed=10))
    err = sum(float(((total[k] - got[k]) ** 2).sum()) for k in total)
    assert t.nmse == pytest.approx(err / sum(float((v ** 2).sum()) for v in total.values()), rel=1e-4)


def test_markdown_has_one_line_per_end_and_gap_with_every_codec():
    rows = catchup.measure(history(), {"fp32": "fp32", "ternary": TERNARY}, ends=[10], gaps=[1, 4])
    text = catchup.markdown(rows, "some-run")
    table = [line for line in text.splitlines() if line.startswith("| 10 |")]
    assert len(table) == 2 and all(line.count("×") == 2 for line in table)
    assert "`some-run`" in text


def test_codecs_are_the_presets_catchups():
    from fedsqueeze.config import load_preset

    specs = catchup.codecs().values()
    for preset in ("stc-p400", "stc-p400-union"):
        assert load_preset(preset)["downlink-catchup"] in specs
    for spec in specs:
        compression.parse_spec(spec)


@pytest.mark.parametrize("downlink", ["stc", "prune=topk,keep=0.01,quant=ternary,ef=true,header=compact"])
def test_end_to_end_on_a_federation_checkpoint(tmp_path, downlink):
    from tests.federation_harness import SMALL, run_direct

    run = tmp_path / "run"
    summary, _ = run_direct({**SMALL, "num-server-rounds": 4, "uplink": "stc", "downlink": downlink,
                             "downlink-mode": "delta"}, run)
    assert summary["status"] == "completed"
    out = tmp_path / "catchup.md"
    assert catchup.main([str(run), "--out", str(out), "--ends", "4", "--gaps", "1,3"]) == 0
    lines = [line for line in out.read_text().splitlines() if line.startswith("| 4 |")]
    assert len(lines) == 2
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        catchup.load_history(tmp_path / "nothing")


def test_measure_refuses_an_empty_history_and_a_zero_gap():
    with pytest.raises(ValueError, match="empty downlink history"):
        catchup.measure([], {"fp32": "fp32"}, ends=[1], gaps=[1])
    with pytest.raises(ValueError, match="gaps must be >= 1"):
        catchup.measure(history(2), {"fp32": "fp32"}, ends=[2], gaps=[0, 1])
