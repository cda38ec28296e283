"""Collect the model-compression stage tables of pipeline runs into one markdown page.

Usage::

    python -m simulations.run seed-pipeline --out runs/seed-pipeline
    python -m simulations.run mcmahan-pipeline --out runs/mcmahan-pipeline
    python benchmarks/model_stages.py runs/seed-pipeline runs/mcmahan-pipeline > benchmarks/model_stages.md

The runs behind `benchmarks/model_stages.md` are kept in `benchmarks/pipelines/` (ledger, stage table,
summary; not the `.pt2` artifacts). Every number comes from the runs' ``model_stages.csv``, ``metrics.csv`` and
``summary.json`` (and the saved ``.pt2`` artifacts, for compressed sizes).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import zstandard

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from server.model_stages import stage_table  # noqa: E402

_INT = ("nonzero_params", "size_bytes", "rounds", "uplink_bytes", "downlink_bytes")
_FLOAT = ("accuracy", "reloaded_accuracy", "sparsity", "x_smaller", "latency_b64_ms", "latency_b1_ms", "seconds")


def _rows(run: Path) -> list[dict]:
    with open(run / "model_stages.csv") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for k in _INT:
            r[k] = int(r[k])
        for k in _FLOAT:
            r[k] = float(r[k])
        if not r.get("zstd_bytes"):  # runs made before the column existed: compress the artifact now
            r["zstd_bytes"] = len(zstandard.ZstdCompressor(level=10).compress((run / "artifacts" / r["artifact"]).read_bytes()))
        r["zstd_bytes"] = int(r["zstd_bytes"])
    return rows


def section(run: Path) -> str:
    summary = json.loads((run / "summary.json").read_text())
    c = summary["config"]
    with open(run / "metrics.csv") as fh:
        ledger = list(csv.DictReader(fh))
    main = [r for r in ledger if r.get("phase", "train") == "train"]
    last = main[-1]
    lines = [
        f"## `{c['name']}`: `{c['model']}` ({summary['num_params']:,} parameters)",
        "",
        f"FedAvg: {c['partition']} partition, fraction-train {c['fraction-train']}, "
        f"E = {c['local-epochs']}, B = {c['batch-size']}, "
        f"lr {c['lr']}, seed {summary['seed']}; uplink `{summary['pipeline_up']}`, downlink `{summary['pipeline_down']}`.",
        f"Training stopped after round {last['round']} at test accuracy {float(last['test_accuracy']):.4f} "
        f"(cumulative uplink {int(last['cum_uplink_bytes']) / 1e6:,.1f} MB). Stages: prune-targets "
        f"`{c['prune-targets']}` ({c['prune-method']}), "
        f"{c['finetune-rounds']} fine-tune rounds each "
        f"(lr {c['finetune-lr']}), {c['qat-rounds']} QAT rounds, "
        f"calibration on {c['stage-clients']} clients x "
        f"{c['calibration-images']} images.",
        "",
        stage_table(_rows(run)),
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()
    print("# Model-level compression of the federated global model\n")
    print("Each run trains a global model with FedAvg, then prunes, fine-tunes (federated, masks fixed), "
          "quantizes (static int8 with activation ranges observed by clients, dynamic int8, bf16) and runs "
          "federated QAT. Accuracy is on the 10,000 MNIST test images, measured on the saved and reloaded "
          "`.pt2` artifact; agreement = share of test images on which the quantized model predicts the same "
          "class as its float parent; latency = one thread, median of 50 forward passes (int8 lowered to "
          "oneDNN int8 kernels); uplink/downlink = federated traffic of the stage (fine-tune/QAT rounds, "
          "calibration and score queries). Machine: 2 shared CPU cores, so latencies are indicative "
          "(the runs shared the cores with a sweep).\n")
    print("Regenerate: `python -m simulations.run seed-pipeline --out runs/seed-pipeline`, "
          "`python -m simulations.run mcmahan-pipeline --out runs/mcmahan-pipeline`, then "
          "`python benchmarks/model_stages.py runs/seed-pipeline runs/mcmahan-pipeline > benchmarks/model_stages.md`. "
          "The ledgers and stage tables are in `benchmarks/pipelines/`.\n")
    for run in args.runs:
        print(section(run))


if __name__ == "__main__":
    main()
