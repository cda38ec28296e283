"""bf16 autocast vs float32 local training in the federation, from two runs' ledgers.

Usage::

    python -m simulations.run fedavg-fp32 model=mcmahan-cnn local-epochs=1 num-server-rounds=4 --out runs/bf16-off
    python -m simulations.run fedavg-fp32 model=mcmahan-cnn local-epochs=1 num-server-rounds=4 bf16-autocast=true --out runs/bf16-on
    python benchmarks/bf16_training.py runs/bf16-off runs/bf16-on > benchmarks/bf16_training.md

Compares test accuracy per round and the clients' own training time (ledger
column ``client_train_s``, median over the round's clients; round 1 excluded
because it includes each worker's warm-up).
"""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path


def load(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as fh:
        return [r for r in csv.DictReader(fh) if int(r["round"]) > 0]


def main() -> None:
    off, on = (Path(p) for p in sys.argv[1:3])
    a, b = load(off), load(on)
    print("# bf16 autocast vs float32 local training (federated)\n")
    print(f"Runs: `{off}` (float32) and `{on}` (`bf16-autocast = true`); same config and seed otherwise.\n")
    print("| round | accuracy fp32 | accuracy bf16 | client train s fp32 | client train s bf16 |")
    print("|---:|---:|---:|---:|---:|")
    for x, y in zip(a, b):
        print(f"| {x['round']} | {float(x['test_accuracy']):.4f} | {float(y['test_accuracy']):.4f} | "
              f"{float(x['client_train_s']):.3f} | {float(y['client_train_s']):.3f} |")
    ta = statistics.median(float(r["client_train_s"]) for r in a[1:])
    tb = statistics.median(float(r["client_train_s"]) for r in b[1:])
    print(f"\nMedian client training time (rounds 2+): fp32 {ta:.3f} s, bf16 {tb:.3f} s: "
          f"**bf16 takes {tb / ta:.2f}x the fp32 time**; final accuracy "
          f"{float(a[-1]['test_accuracy']):.4f} vs {float(b[-1]['test_accuracy']):.4f}.")


if __name__ == "__main__":
    main()
