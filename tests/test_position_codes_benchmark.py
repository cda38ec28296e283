"""benchmarks.position_codes: a run's downlink messages re-coded with each position coder."""

from __future__ import annotations

import pytest

import compression
from benchmarks import position_codes
from benchmarks.catchup import accumulate
from tests.test_catchup_benchmark import history

CATCHUP = "prune=threshold,threshold=1e-12,quant=kmeans,clusters=8,coder=golomb"


def test_chains_recode_to_the_run_s_own_bytes_and_catchups_to_the_accumulated_update():
    hist = history(8)
    messages = [("chain", 5, 8), ("chain", 7, 8), ("catchup", 0, 8), ("catchup", 2, 6), ("full", -1, 8)]
    rows = {r.kind: r for r in position_codes.measure(hist, None, messages, CATCHUP)}
    assert set(rows) == {"chain", "catchup"}  # the float32 model has no positions to re-code
    chain = rows["chain"]
    assert (chain.messages, chain.gap) == (2, 2.0)
    # the broadcasts were coded with golomb: re-coding them with it gives back their own sizes
    assert chain.bytes["golomb"] == sum(len(p) for p in hist[5:8]) + len(hist[7])
    decoded = [compression.decode(p) for p in hist]
    want = sum(len(compression.encode(accumulate(decoded, s, e), CATCHUP, round=e, seed=e)) for s, e in ((0, 8), (2, 6)))
    assert rows["catchup"].bytes["golomb"] == want
    # the grid code is used only where it is cheaper: at most the spec's ",coder=grid" more per payload
    # (golomb, the default coder, is not spelled out in the header)
    extra = len(",coder=grid")
    assert chain.bytes["grid"] <= chain.bytes["golomb"] + 4 * extra
    assert rows["catchup"].bytes["grid"] <= rows["catchup"].bytes["golomb"] + 2 * extra


def test_markdown_totals_every_message():
    rows = position_codes.measure(history(6), None, [("chain", 3, 6), ("catchup", 1, 6)], CATCHUP)
    text = position_codes.markdown(rows, "some-run")
    assert "| all | 2 |" in text and "`some-run`" in text
    assert sum(line.startswith("| chain") or line.startswith("| catchup") for line in text.splitlines()) == 2


def test_refuses_what_the_history_cannot_answer():
    with pytest.raises(ValueError, match="empty downlink history"):
        position_codes.measure([], None, [], CATCHUP)
    with pytest.raises(ValueError, match="not in a history"):
        position_codes.measure(history(3), None, [("chain", 2, 5)], CATCHUP)
    with pytest.raises(ValueError, match="not in a history"):
        position_codes.measure(history(3), None, [("catchup", 0, 2)], "")
