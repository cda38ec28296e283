"""Codec benchmark on a McMahan-CNN-shaped update (not a test).

Prints a markdown report to stdout:

1. bytes per kept value at 1 % density for top-k + ternary + gap coding
   (STC) next to a naive int64-index + float32-value encoding (12 B);
2. payload size, bits/param and relative L2 distortion for many pipelines;
3. encode+decode time per update (median of repeats) and that time as a
   fraction of one local epoch (600 samples, batch 10, SGD) of the McMahan
   CNN, timed here on random inputs.

The update is drawn from a Student-t (df=3) with a different scale per layer,
a heavy-tailed stand-in for real FedAvg updates.

Usage: ``python benchmarks/bench_codec.py [--repeats N]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import compression  # noqa: E402
from fedsqueeze.models import build_model  # noqa: E402

MODEL = "mcmahan-cnn"  # the model of fedsqueeze.models, not a copy
SHAPES = {k: tuple(v.shape) for k, v in build_model(MODEL).state_dict().items()}
# Per-layer scales of the update (larger for small layers, as in real updates).
SCALES = {"conv1": 3e-3, "conv2": 1e-3, "fc1": 2e-4, "fc2": 2e-3}


def make_update(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    dist = torch.distributions.StudentT(torch.tensor(3.0))
    out = {}
    for name, shape in SHAPES.items():
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        scale = SCALES[name.split(".")[0]] * (0.5 if name.endswith("bias") else 1.0)
        out[name] = (dist.sample(shape) * scale).float()
    return out


def time_epoch(repeats: int) -> float:
    """Median seconds of one local epoch: 600 samples, batch 10, SGD."""
    torch.manual_seed(0)
    model = build_model(MODEL)
    assert sum(p.numel() for p in model.parameters()) == 1_663_370
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(600, 1, 28, 28)
    y = torch.randint(0, 10, (600,))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(0, 600, 10):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + 10]), y[i:i + 10]).backward()
            opt.step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def time_codec(update, spec, repeats: int) -> tuple[float, float]:
    enc, dec = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        p = compression.encode(update, spec)
        t1 = time.perf_counter()
        compression.decode(p)
        t2 = time.perf_counter()
        enc.append(t1 - t0)
        dec.append(t2 - t1)
    return statistics.median(enc), statistics.median(dec)


SCHEMES = [
    ("fp32 (identity)", "fp32"),
    ("fp16", "fp16"),
    ("bf16", "bf16"),
    ("8-bit uniform, per channel", "q8"),
    ("4-bit uniform, per channel", "quant=uniform,bits=4,granularity=channel"),
    ("4-bit stochastic (preset)", "q4-stochastic"),
    ("2-bit uniform, per channel", "quant=uniform,bits=2,granularity=channel"),
    ("QSGD 4-bit, blocks of 512", "quant=qsgd,bits=4,granularity=block,block=512"),
    ("scaled sign (1 bit)", "sign-ef"),
    ("ternary = STC (top-k 1 % + ternary)", "stc"),
    ("STC + zstd", "prune=topk,keep=0.01,quant=ternary,ef=true,zstd=true"),
    ("top-k 10 %, float32", "prune=topk,keep=0.1"),
    ("top-k 1 %, float32", "prune=topk,keep=0.01"),
    ("top-k 0.1 %, float32", "prune=topk,keep=0.001"),
    ("top-k 1 % + 8-bit (preset)", "topk-1pct-q8-ef"),
    ("random-k 1 %, rescaled", "randk-1pct"),
    ("FedZip-like (top-k 1 % + 3-means + Huffman)", "fedzip-like"),
    ("structured 50 % rows, float32", "structured-50pct"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7, help="codec timing repeats (median)")
    ap.add_argument("--epoch-repeats", type=int, default=3, help="local-epoch timing repeats (median)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for epoch and codec (clients run with client-threads = 1)")
    args = ap.parse_args()
    # One thread, as each simulated client: with more OpenMP threads than free
    # cores the epoch time balloons (spin-waiting) and the fraction looks better than it is.
    torch.set_num_threads(args.threads)

    update = make_update()
    n = sum(v.numel() for v in update.values())
    assert n == 1_663_370
    epoch = time_epoch(args.epoch_repeats)

    print("# Codec benchmark (McMahan CNN update)\n")
    print(f"Update: {n:,} parameters, Student-t(df=3) values with per-layer scales {SCALES}. "
          f"torch {torch.__version__}, numpy {np.__version__}, {platform.machine()}, "
          f"{torch.get_num_threads()} torch threads. Median of {args.repeats} codec runs; "
          f"one local epoch (600 samples, batch 10, SGD, random inputs) = **{epoch * 1e3:.0f} ms** "
          f"(median of {args.epoch_repeats}).\n")

    # 1. Bytes per kept value at 1 % density.
    spec = compression.parse_spec("stc")
    payload, rep = compression.encode_with_report(update, spec)
    kept_big = rep.nnz - sum(v.numel() for v in update.values() if v.numel() < spec.min_numel)
    naive = 12 * rep.nnz
    print("## Bytes per kept value at 1 % density\n")
    print("| encoding | payload bytes | kept values | bytes / kept value |")
    print("|---|---:|---:|---:|")
    print(f"| naive int64 index + float32 value | {naive:,} | {rep.nnz:,} | 12.00 |")
    print(f"| top-k 1 % + ternary + Golomb/bitmap positions (`{spec}`), "
          f"all headers and {rep.nnz - kept_big} raw small-tensor values included "
          f"| {rep.payload_bytes:,} | {rep.nnz:,} | **{rep.payload_bytes / rep.nnz:.2f}** |")
    print()

    # 2+3. Size, distortion, time.
    print("## Size, distortion and time per scheme\n")
    print("| scheme | spec | payload bytes | bits/param | ratio | rel. L2 distortion | nnz "
          "| encode ms | decode ms | enc+dec / epoch |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, s in SCHEMES:
        spec = compression.parse_spec(s)
        _, rep = compression.encode_with_report(update, spec)
        enc, dec = time_codec(update, spec, args.repeats)
        print(f"| {label} | `{spec}` | {rep.payload_bytes:,} | {rep.bits_per_param:.3f} | "
              f"{rep.compression_ratio:.1f}x | {rep.rel_distortion:.4f} | {rep.nnz:,} | "
              f"{enc * 1e3:.1f} | {dec * 1e3:.1f} | {(enc + dec) / epoch:.2%} |")
    print()
    print("Distortion is one round without error feedback (`ef=true` only changes what the client keeps). "
          "Goals: STC <= 2.5 B per kept value; STC encode+decode <= 5 % of a local epoch.")


if __name__ == "__main__":
    main()
