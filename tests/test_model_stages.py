"""Model-level compression of the federated global model (issue 6), end to end in process."""

from __future__ import annotations

import csv

import pytest
import torch

import compression
from client.local_round import ClientState, run_local_round
from fedsqueeze import modelzip as mz
from fedsqueeze.data import test_tensors as load_test_set
from fedsqueeze.models import build_model, initial_state
from fedsqueeze.modelzip.masks import MaskError, pack_masks, unpack_masks
from fedsqueeze.protocol.instructions import TrainInstruction
from fedsqueeze.protocol.messages import MASK, MODEL, UPDATE, record_payloads
from fedsqueeze.train import evaluate
from tests.federation_harness import SMALL, run_inprocess


def test_masks_roundtrip_and_errors():
    masks = {"a.weight": (torch.rand(5, 3, 2, 2) > 0.5).float(), "b.weight": torch.tensor([[1.0, 0.0, 1.0]])}
    blob = pack_masks(masks)
    back = unpack_masks(blob, {"a.weight": (5, 3, 2, 2), "b.weight": (1, 3)})
    assert all(torch.equal(masks[k], back[k]) for k in masks)
    # header 7; a: name 2+8, shape 1+4*4, 60 bits -> 8 bytes; b: 2+8, 1+2*4, 3 bits -> 1 byte; CRC 4
    assert len(blob) == 7 + (10 + 17 + 8) + (10 + 9 + 1) + 4
    with pytest.raises(MaskError, match="CRC32"):
        unpack_masks(blob[:-5] + bytes([blob[-5] ^ 1]) + blob[-4:])
    with pytest.raises(MaskError, match="magic"):
        unpack_masks(b"XXXX" + blob[4:])
    with pytest.raises(MaskError, match="shape"):
        unpack_masks(blob, {"a.weight": (5, 3, 2, 2), "b.weight": (3, 1)})
    with pytest.raises(MaskError, match="unknown parameter"):
        unpack_masks(blob, {"a.weight": (5, 3, 2, 2)})
    with pytest.raises(MaskError, match="other than 0 and 1"):
        pack_masks({"x": torch.tensor([0.5])})


def test_client_update_and_residual_are_zero_at_pruned_positions(mnist):
    """A masked client round: pruned weights stay zero in the model, the update and the EF residual."""
    model = build_model("seed-cnn")
    model.load_state_dict(initial_state("seed-cnn", 0))
    masks = mz.prune_global_l1(model, 0.5)
    weights = model.state_dict()
    ins = TrainInstruction(
        round=3, seed=0, model="seed-cnn", partition="iid", dirichlet_alpha=0.5, shards_per_client=2,
        local_epochs=1, batch_size=20, lr=0.05, momentum=0.0, weight_decay=0.0, client_threads=1, data_dir="",
        uplink="topk-1pct-q8-ef", downlink_mode="full", base_version=-1, target_version=3)
    shapes = {k: tuple(v.shape) for k, v in weights.items()}
    residual = {k: torch.randn_like(v) for k, v in weights.items()}  # stale memory from before pruning
    out = run_local_round(ins, [compression.encode(weights, "fp32")], ClientState(residual=residual), 0, 10,
                          mask_payload=pack_masks(masks))
    update = compression.decode(out.payload, expected=shapes)
    for name, mask in masks.items():
        assert torch.all(update[name][mask == 0] == 0), name
        assert torch.all(out.state.residual[name][mask == 0] == 0), name
    assert any(torch.any(update[n][m == 1] != 0) for n, m in masks.items())  # the rest did train


@pytest.mark.slow  # Ray worker processes
@pytest.mark.timeout(900)
def test_federated_prune_finetune_quantize(tmp_path, mnist):
    """Prune 50 % → 2 masked fine-tune rounds → static int8 from federated calibration → 1 QAT round."""
    cfg = {**SMALL, "name": "stages", "uplink": "q8", "downlink": "q8", "num-server-rounds": 2,
           "prune-targets": "0.5", "prune-method": "global-l1", "finetune-rounds": 2, "qat-rounds": 1,
           "model-quant": "static-int8,qat-int8,bf16", "stage-clients": 3, "calibration-images": 200}
    summary, grid = run_inprocess(cfg, tmp_path)

    with open(tmp_path / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["phase"] for r in rows] == ["train"] * 3 + ["finetune-0.5"] * 2 + ["qat"]

    stages = {r["stage"]: r for r in csv.DictReader(open(tmp_path / "model_stages.csv"))}
    assert list(stages) == ["float32", "pruned 50% (global-l1)", "pruned 50% (global-l1) + FT",
                            "int8 static (federated calibration)", "bf16", "int8 QAT (federated)"]
    assert summary["model_stages"][-1]["stage"] == "int8 QAT (federated)"

    # Every masked train message carried the masks; every client update and the aggregate are zero there.
    masks = None
    train_exchanges = [(s, r) for s, r in grid.exchanges if s and s[0].metadata.message_type == "train"]
    masked = [(s, r) for s, r in train_exchanges if MASK in s[0].content]
    assert len(masked) == 3  # two fine-tune rounds and the QAT round
    shapes = {k: tuple(v.shape) for k, v in initial_state("seed-cnn", 0).items()}
    for sent, replies in masked:
        masks = unpack_masks(record_payloads(sent[0].content[MASK])[0], shapes)
        assert all(MASK in m.content for m in sent)
        for reply in replies:
            (payload,) = record_payloads(reply.content[UPDATE])
            update = compression.decode(payload, expected=shapes)
            for name, mask in masks.items():
                assert torch.all(update[name][mask == 0] == 0), name
    final = mz.load_artifact(tmp_path / "artifacts" / stages["pruned 50% (global-l1) + FT"]["artifact"])
    sd = final.state_dict()
    nonzero = sum(int((sd[n] != 0).sum()) for n in masks)
    assert nonzero == sum(int(m.sum()) for m in masks.values())
    assert float(stages["pruned 50% (global-l1) + FT"]["sparsity"]) >= 0.49
    # the zeros do not shrink the dense .pt2, but they do shrink it compressed
    ratio = {k: int(stages[k]["zstd_bytes"]) / int(stages[k]["size_bytes"]) for k in stages}
    assert ratio["pruned 50% (global-l1) + FT"] < ratio["float32"] - 0.1

    # Calibration ranges came from the clients: the queries reached stage-clients nodes.
    queries = [(s, r) for s, r in grid.exchanges if s and s[0].metadata.message_type == "query"
               and "op" in s[0].content["config"]]
    assert [len(s) for s, _ in queries] == [3, 3] and all(len(r) == 3 for _, r in queries)

    # int8 agrees with its float model and the saved artifacts reload to the reported accuracy.
    x, y = load_test_set()
    for name in ("int8 static (federated calibration)", "int8 QAT (federated)"):
        row = stages[name]
        assert float(row["agreement"]) >= 0.99, row
        reloaded = mz.load_artifact(tmp_path / "artifacts" / row["artifact"])
        assert evaluate(reloaded, x, y)[1] == pytest.approx(float(row["reloaded_accuracy"]), abs=1e-9)
        assert float(row["accuracy"]) == pytest.approx(float(row["reloaded_accuracy"]), abs=2e-4)
    assert int(stages["int8 static (federated calibration)"]["size_bytes"]) < int(stages["float32"]["size_bytes"])


@pytest.mark.slow  # Ray worker processes
def test_taylor_pruning_uses_federated_scores(tmp_path, mnist):
    cfg = {**SMALL, "name": "taylor", "uplink": "fp32", "downlink": "fp32", "num-server-rounds": 1,
           "prune-targets": "0.6", "prune-method": "taylor", "finetune-rounds": 1, "stage-clients": 2,
           "calibration-images": 100}
    summary, grid = run_inprocess(cfg, tmp_path)
    queries = [s for s, _ in grid.exchanges if s and s[0].metadata.message_type == "query"
               and s[0].content["config"].get("op") == "scores"]
    assert len(queries) == 1 and len(queries[0]) == 2
    assert all(MODEL in m.content for m in queries[0])
    stages = summary["model_stages"]
    assert stages[1]["stage"] == "pruned 60% (taylor)" and stages[1]["rounds"] == 0
    assert stages[1]["uplink_bytes"] > 0 and stages[1]["sparsity"] == pytest.approx(0.6, abs=0.01)
