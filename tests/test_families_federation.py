"""The compressor families in real (in-process) federations: client state, ledger bytes."""

import numpy as np

import compression
from fedsqueeze.protocol.messages import UPDATE, record_payloads
from tests.federation_harness import SMALL, read_rows, run_direct


def test_powersgd_keeps_its_warm_start_factor_in_the_client_state(tmp_path):
    cfg = {**SMALL, "uplink": "powersgd-r2", "downlink": "fp32", "downlink-mode": "full", "seed": 3}
    summary, grid = run_direct(cfg, tmp_path, num_supernodes=5)
    assert summary["status"] == "completed"
    trained = [ex for ex in grid.exchanges if ex[0] and ex[0][0].metadata.message_type == "train"]
    last_payload = {}
    for _, replies in trained:
        for r in replies:
            last_payload[r.metadata.src_node_id] = record_payloads(r.content.array_records[UPDATE])[0]
    assert last_payload
    rank = 2
    for node, payload in last_payload.items():
        state = grid.contexts[node].state["codec-state"].to_torch_state_dict()
        # one factor per matrix above min-numel (conv1's 144 weights are sent raw: no state)
        assert sorted(state) == ["conv2.weight/q", "fc.weight/q"]
        _, blocks = compression.read_blocks(payload)
        for info, _, r in blocks:
            if f"{info.name}/q" not in state:
                continue
            n, m = info.shape[0], int(np.prod(info.shape[1:]))
            q_sent = np.frombuffer(bytes(r.take_all())[4 * n * rank:], dtype="<f4").reshape(m, rank)
            assert np.array_equal(state[f"{info.name}/q"].numpy(), q_sent)  # the next warm start is Q' as sent
    # the ledger's payload bytes are the payloads' exact lengths
    rows = read_rows(tmp_path)
    for (_, replies), row in zip(trained, rows[1:]):
        assert int(row["uplink_payload_bytes"]) == sum(
            len(record_payloads(r.content.array_records[UPDATE])[0]) for r in replies)


def test_powersgd_exact_resume_restores_the_warm_start_factors(tmp_path_factory):
    """With client-state-dir, a cut-and-resumed PowerSGD run equals the uninterrupted one (factors saved too)."""
    from tests.federation_harness import assert_same_ledgers

    cfg = {**SMALL, "uplink": "powersgd-r2", "downlink": "fp32", "downlink-mode": "full", "seed": 2,
           "num-server-rounds": 4, "fraction-train": 0.6}
    whole, cut = tmp_path_factory.mktemp("whole"), tmp_path_factory.mktemp("cut")
    run_direct({**cfg, "client-state-dir": str(tmp_path_factory.mktemp("cs"))}, whole, num_supernodes=5)
    state_dir = tmp_path_factory.mktemp("cs")
    run_direct({**cfg, "client-state-dir": str(state_dir), "num-server-rounds": 2}, cut, num_supernodes=5)
    saved = sorted(p.name for p in state_dir.rglob("p*.npz"))
    assert saved
    with np.load(next(state_dir.rglob("p*.npz"))) as data:
        assert any(k.startswith("codec/") and k.endswith("/q") for k in data.files)
    run_direct({**cfg, "client-state-dir": str(state_dir), "resume": True}, cut, num_supernodes=5)
    assert_same_ledgers(read_rows(whole), read_rows(cut), envelope_jitter=0)
