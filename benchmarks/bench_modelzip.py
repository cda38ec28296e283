"""Centralized prune → fine-tune → quantize → export pipeline on MNIST (not a test).

For each model (seed-cnn, mcmahan-cnn):

1. train float32 (SGD, momentum 0.9, batch 64, full 60k training set);
2. global L1 prune of all Conv/Linear weights to 50 %, fine-tune 1 epoch with
   the masks fixed; prune to 80 % (cumulative), fine-tune 1 epoch;
3. static int8 PTQ of the 80 % model, calibrated the federated way: two
   "clients" observe activation ranges on 1,000 training images each, the
   ranges are merged (min of mins / max of maxes), the int8 model is built
   from the merged ranges;
4. int8 QAT: a short fake-quantized fine-tune of the 80 % model (masks kept),
   converted to the same int8 format;
5. dynamic int8 (torchao, Linear layers only) and a bfloat16 cast;
6. bf16-autocast vs float32 local training (accuracy and time).

Every stage is saved as a ``.pt2`` artifact in ``--out``, reloaded, and
measured from the reloaded file: test accuracy, non-zero parameters, file
size, median single-thread latency at batch 64 and 1.

Usage: ``nice -n 15 python benchmarks/bench_modelzip.py [--out DIR] [--threads 2]``
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fedsqueeze import modelzip as mz  # noqa: E402
from fedsqueeze.data import load_mnist, to_input  # noqa: E402
from fedsqueeze.models import build_model  # noqa: E402
from fedsqueeze.train import evaluate, train  # noqa: E402

# Budget per model: float epochs, lr; fine-tune uses FT_LR for FT_EPOCHS.
PLANS = {
    "seed-cnn": {"epochs": 3, "lr": 0.05},
    "mcmahan-cnn": {"epochs": 2, "lr": 0.05},
}
BATCH, MOMENTUM = 64, 0.9
FT_EPOCHS, FT_LR = 1, 0.01
QAT_IMAGES, QAT_LR = 20_000, 0.005
CALIB_PER_CLIENT = 1000
BF16_IMAGES = 10_000


def run_model(name: str, data, out: Path, repeats: int, seed: int) -> tuple[list[dict], dict, dict]:
    x, y, xt, yt = data
    plan = PLANS[name]
    torch.manual_seed(seed)
    model = build_model(name)
    common = {"batch_size": BATCH, "momentum": MOMENTUM}
    timings = {}

    t0 = time.perf_counter()
    train(model, x, y, epochs=plan["epochs"], lr=plan["lr"], seed=seed, **common)
    timings["train float"] = time.perf_counter() - t0
    rows = [mz.stage_report("float32", model, xt, yt, out / f"{name}-float32.pt2", repeats)]

    for step, amount in enumerate((0.5, 0.8), start=1):
        masks = mz.prune_global_l1(model, amount)
        _, acc_before = evaluate(model, xt, yt)
        t0 = time.perf_counter()
        train(model, x, y, epochs=FT_EPOCHS, lr=FT_LR, seed=seed + step, masks=masks, **common)
        timings[f"fine-tune {amount:.0%}"] = time.perf_counter() - t0
        row = mz.stage_report(f"L1 {amount:.0%} + FT (before FT {acc_before:.4f})", model, xt, yt,
                              out / f"{name}-pruned{int(amount * 100)}.pt2", repeats)
        rows.append(row)

    clients = [x[i * CALIB_PER_CLIENT : (i + 1) * CALIB_PER_CLIENT] for i in range(2)]
    merged = mz.merge_ranges([mz.observe_ranges(model, c) for c in clients])
    int8 = mz.quantize_static_int8(model, merged)
    with torch.no_grad():
        agree = float((int8(xt).argmax(1) == model(xt).argmax(1)).float().mean())
    rows.append(mz.stage_report("int8 static PTQ (merged ranges)", int8, xt, yt, out / f"{name}-int8-ptq.pt2", repeats))

    t0 = time.perf_counter()
    qat = mz.prepare_qat(model)
    train(qat, x[:QAT_IMAGES], y[:QAT_IMAGES], epochs=1, lr=QAT_LR, seed=seed + 3, masks=masks, **common)
    int8_qat = mz.convert_qat(qat)
    timings["QAT"] = time.perf_counter() - t0
    rows.append(mz.stage_report(f"int8 QAT ({QAT_IMAGES // 1000}k imgs)", int8_qat, xt, yt, out / f"{name}-int8-qat.pt2", repeats))

    rows.append(mz.stage_report("int8 dynamic (Linear only)", mz.quantize_dynamic_int8(model), xt, yt,
                                out / f"{name}-int8-dynamic.pt2", repeats))
    rows.append(mz.stage_report("bfloat16 cast", mz.cast_model(model, torch.bfloat16), xt, yt,
                                out / f"{name}-bf16.pt2", repeats))

    torch.manual_seed(seed)
    bf16 = mz.measure_bf16_training(build_model(name), x[:BF16_IMAGES], y[:BF16_IMAGES], xt, yt,
                                    epochs=1, lr=plan["lr"], seed=seed, **common)
    extras = {"int8/float argmax agreement": agree, "sparsity": mz.sparsity(model), "timings_s": timings}
    return rows, bf16, extras


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.expanduser("~/fedsqueeze-runs/modelzip"))
    parser.add_argument("--data-dir", default=os.environ.get("FEDSQUEEZE_DATA_DIR", "/work/shared/data/mnist"))
    parser.add_argument("--models", nargs="+", default=list(PLANS), choices=list(PLANS))
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training (latency always uses 1)")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)

    mnist = load_mnist(args.data_dir)
    data = (
        to_input(mnist.train_images), torch.from_numpy(np.array(mnist.train_labels)).long(),
        to_input(mnist.test_images), torch.from_numpy(np.array(mnist.test_labels)).long(),
    )
    out = Path(args.out)
    print(f"# modelzip benchmark\n\ntorch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"training threads {args.threads}, latency: 1 thread, median of {args.repeats}; artifacts in {out}\n")
    for name in args.models:
        start = time.perf_counter()
        rows, bf16, extras = run_model(name, data, out, args.repeats, args.seed)
        print(f"## {name} ({time.perf_counter() - start:.0f} s)\n")
        print(mz.markdown_table(rows))
        print(f"\nsparsity of prunable weights: {extras['sparsity']:.4f}; "
              f"int8 PTQ vs float argmax agreement: {extras['int8/float argmax agreement']:.4f}")
        print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in extras["timings_s"].items()))
        print(f"bf16 autocast training ({BF16_IMAGES} imgs, 1 epoch): "
              + "; ".join(f"{k}: acc {v['accuracy']:.4f}, {v['train_seconds']:.1f} s" for k, v in bf16.items()) + "\n")


if __name__ == "__main__":
    main()
