"""benchmarks.envelope: wire minus payload bytes per message, by preset and split, worked by hand."""

from __future__ import annotations

import math

import pytest

from benchmarks import envelope

HEADER = "round,phase,partition_id,node_id,status,num_examples,downlink_bytes,uplink_bytes,downlink_payload_bytes,uplink_payload_bytes\n"


def _run(root, name, rows):
    d = root / name
    d.mkdir()
    (d / "clients.csv").write_text(HEADER + "".join(f"1,train,0,7,ok,600,{a},{b},{c},{e}\n" for a, b, c, e in rows))


def test_envelope_per_message_and_share(tmp_path):
    # (downlink wire, uplink wire, downlink payload, uplink payload)
    _run(tmp_path, "a__iid__seed0", [(1500, 1000, 500, 400), (2500, 0, 1500, 0)])  # the 2nd client never replied
    _run(tmp_path, "a__iid__seed1", [(1000, 900, 0, 300)])
    _run(tmp_path, "b__shards2__seed0", [(100, 100, 100, 100)])
    (tmp_path / "not-a-run").mkdir()  # no clients.csv: ignored
    rows = {(r.preset, r.split): r for r in envelope.measure(tmp_path)}
    a, b = rows["a", "iid"], rows["b", "shards2"]
    assert a.seeds == {"seed0", "seed1"} and a.messages == {"uplink": 2, "downlink": 3}
    # uplink: (1000 - 400 + 900 - 300) / 2 messages, of 1900 wire bytes
    assert a.per_message("uplink") == 600 and a.share("uplink") == pytest.approx(1200 / 1900)
    # downlink: (1000 + 1000 + 1000) / 3, of 5000
    assert a.per_message("downlink") == 1000 and a.share("downlink") == pytest.approx(0.6)
    assert b.per_message("uplink") == 0 and b.share("downlink") == 0
    text = envelope.markdown(list(rows.values()), "somewhere")
    assert "| `a` | iid | 2 | 2 | 600 | 63.2% | 3 | 1,000 | 60.0% |" in text
    assert "`somewhere`" in text and text.index("| `a` | iid") < text.index("| `b` | shards2")
    assert math.isnan(envelope.Row("c", "iid").per_message("uplink"))


def test_a_folder_that_is_not_a_run_name_is_refused(tmp_path):
    _run(tmp_path, "stray", [(1, 1, 1, 1)])
    with pytest.raises(ValueError, match="stray"):
        envelope.measure(tmp_path)
