"""Where does a simulated round's time go? Ratios against the physical floor, one run.

Workload (issue 7): ``mcmahan-cnn``, 10 clients per round, 600 samples each,
1 local epoch, batch 10, SGD lr 0.05.

1. floor: the same local training of 10 clients in a plain PyTorch loop, no
   Flower, in warmed-up processes (one untimed client first: oneDNN kernel
   creation and the ``torch._dynamo`` import that ``torch.optim`` does on first
   use cost ~2 s once per process, not per round). Three layouts:
   one process with 2 threads, one process with 1 thread (the issue's floor is
   the faster of these), and two processes with 1 thread each, started
   together at a barrier, the round ending with the slower (the simulation's
   own layout: the strict floor, the best this machine does). A simulated
   round also evaluates the global model on the 10,000 test images, so
   "floor + eval" adds one evaluation (2 threads) in plain PyTorch;
2. the same rounds through ``flwr run`` (Ray backend, 100 supernodes) with
   ``fedavg-fp32`` and with ``stc``: median round wall time (round 1 excluded:
   actor start-up), its breakdown from the ledger (client phase, evaluation,
   the rest) and the peak RSS of the whole process tree; and ``fedavg-fp32``
   with ``eval-every`` beyond the last round, whose middle rounds run without
   the test pass: the simulated round measured directly, not by subtraction;
3. the data path: samples/s of this project's tensor loader against
   torchvision ``MNIST`` + ``ToTensor``/``Normalize`` + ``DataLoader``;
4. encode+decode time of the STC uplink per client as a fraction of that
   client's (warm) local training.

Usage: ``python benchmarks/bench_round.py [--rounds 7] [--repeats 3]``
(set ``FEDSQUEEZE_DATA_DIR``). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import multiprocessing as mp
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

import compression
from fedsqueeze.data import load_mnist, to_input
from fedsqueeze.models import build_model, initial_state
from fedsqueeze.partition import partition
from fedsqueeze.train import state_delta, train

CLIENTS, EPOCHS, BATCH, LR = 10, 1, 10, 0.05


def _client_tensors(n_clients: int = CLIENTS):
    mnist = load_mnist()
    labels = np.asarray(mnist.train_labels)
    parts = partition(labels, 100, "iid", seed=0)[:n_clients]
    return [(to_input(mnist.train_images[p]), torch.from_numpy(labels[p].astype(np.int64))) for p in parts]


def _fit(model: torch.nn.Module, w0: dict, data: list, idx: list[int]) -> None:
    for i in idx:
        model.load_state_dict(w0)
        train(model, *data[i], epochs=EPOCHS, batch_size=BATCH, lr=LR, seed=i)


def _floor_worker(idx: list[int], threads: int, repeats: int, barrier, out) -> None:
    """Train clients ``idx`` ``repeats`` times after one untimed warm-up client; put the times on ``out``."""
    torch.set_num_threads(threads)
    data = _client_tensors()
    w0 = initial_state("mcmahan-cnn", 0)
    model = build_model("mcmahan-cnn")
    _fit(model, w0, data, idx[:1])
    times = []
    for _ in range(repeats):
        barrier.wait()  # workers of one layout start each repeat together
        start = time.perf_counter()
        _fit(model, w0, data, idx)
        times.append(time.perf_counter() - start)
    out.put(times)


FLOOR_LAYOUTS = {  # name -> (client indices per process, threads per process)
    "one process, 2 threads": ([list(range(CLIENTS))], 2),
    "one process, 1 thread": ([list(range(CLIENTS))], 1),
    "two processes, 1 thread each": ([list(range(0, CLIENTS, 2)), list(range(1, CLIENTS, 2))], 1),
}


def floor_seconds(repeats: int) -> dict[str, float]:
    """Median wall time of 10 clients' local training without Flower, per layout."""
    ctx = mp.get_context("spawn")
    result = {}
    for name, (groups, threads) in FLOOR_LAYOUTS.items():
        barrier, out = ctx.Barrier(len(groups)), ctx.Queue()
        procs = [ctx.Process(target=_floor_worker, args=(g, threads, repeats, barrier, out)) for g in groups]
        for p in procs:
            p.start()
        per_worker = [out.get() for _ in procs]
        for p in procs:
            p.join()
        result[name] = statistics.median(max(ts) for ts in zip(*per_worker))
    return result


def eval_seconds(repeats: int) -> float:
    """Median wall time of one global evaluation on the 10,000 test images (2 threads)."""
    from fedsqueeze.data import test_tensors
    from fedsqueeze.train import evaluate

    torch.set_num_threads(2)
    x, y = test_tensors()
    model = build_model("mcmahan-cnn")
    model.load_state_dict(initial_state("mcmahan-cnn", 0))
    evaluate(model, x, y)  # the default batch size is the simulation's default too
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        evaluate(model, x, y)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class _RssSampler(threading.Thread):
    """Peak summed RSS of this process and all its descendants (sampled every 0.25 s)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.stop = 0, threading.Event()

    def run(self) -> None:
        from simulations.run import descendants

        page = os.sysconf("SC_PAGE_SIZE")
        while not self.stop.is_set():
            total = 0
            for pid in [os.getpid(), *descendants(os.getpid())]:
                try:
                    total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
                except (OSError, IndexError, ValueError):
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.25)


SIMULATIONS = {  # label -> (preset, extra overrides)
    "fedavg-fp32": ("fedavg-fp32", {}),
    "stc": ("stc", {}),
    # rounds 2..N-1 skip the evaluation (only round 0 and the last are evaluated): the
    # round as the simulation runs it, without the 10,000-image test pass
    "fedavg-fp32, eval-every > rounds": ("fedavg-fp32", {"eval-every": 10_000}),
}


def simulated_rounds(preset: str, rounds: int, extra: dict | None = None) -> tuple[list[float], int, list[dict]]:
    """Round wall times (s), peak RSS (bytes) and ledger rows of a real `flwr run` simulation."""
    from simulations.run import resolve_overrides, run_experiment

    cfg = resolve_overrides(preset, {"model": "mcmahan-cnn", "num-server-rounds": rounds, "local-epochs": EPOCHS,
                                     "batch-size": BATCH, "lr": LR, "min-available-nodes": 100, **(extra or {})})
    sampler = _RssSampler()
    sampler.start()
    with tempfile.TemporaryDirectory() as tmp:
        run_experiment(cfg, Path(tmp), num_supernodes=100, quiet=True)
        with open(Path(tmp) / "metrics.csv") as fh:
            rows = list(csv.DictReader(fh))
    sampler.stop.set()
    sampler.join()
    return [float(r["round_s"]) for r in rows[1:]], sampler.peak, rows


def data_path_samples_per_s(repeats: int) -> dict[str, float]:
    """Samples/s over the same 6,000 images in batches of 10: ours vs the quickstart pipeline."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    mnist = load_mnist()
    idx = partition(np.asarray(mnist.train_labels), 10, "iid", seed=0)[0]
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as root:
        raw = Path(root) / "MNIST" / "raw"
        raw.mkdir(parents=True)
        src = Path(os.environ.get("FEDSQUEEZE_DATA_DIR", ""))
        for f in src.glob("*-ubyte*"):  # torchvision wants the uncompressed IDX files
            if f.suffix == ".gz":
                (raw / f.stem).write_bytes(gzip.decompress(f.read_bytes()))
            else:
                (raw / f.name).symlink_to(f.resolve())
        tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
        ds = Subset(datasets.MNIST(root, train=True, download=False, transform=tf), idx.tolist())
        for _ in range(repeats):
            start = time.perf_counter()
            x = to_input(mnist.train_images[idx])
            y = torch.from_numpy(np.asarray(mnist.train_labels)[idx].astype(np.int64))
            order = torch.randperm(len(y))
            for lo in range(0, len(y), BATCH):
                b = order[lo : lo + BATCH]
                _ = (x[b], y[b])
            ours.append(len(idx) / (time.perf_counter() - start))
            start = time.perf_counter()
            for _ in DataLoader(ds, batch_size=BATCH, shuffle=True):
                pass
            theirs.append(len(idx) / (time.perf_counter() - start))
    return {"ours": statistics.median(ours), "torchvision": statistics.median(theirs)}


def codec_fraction(repeats: int) -> tuple[float, float]:
    """(encode+decode s, local training s) per client for STC on real deltas, both warm, 1 thread.

    The error-feedback residual is carried from one repeat to the next, as a
    client carries it from round to round.
    """
    torch.set_num_threads(1)
    x, y = _client_tensors(1)[0]
    model = build_model("mcmahan-cnn")
    w0 = initial_state("mcmahan-cnn", 0)
    spec = compression.parse_spec("stc")
    train_times, codec_times, residual = [], [], None
    for r in range(repeats + 1):
        model.load_state_dict(w0)
        t_train = train(model, x, y, epochs=EPOCHS, batch_size=BATCH, lr=LR, seed=r).seconds
        delta = state_delta(model.state_dict(), w0)
        start = time.perf_counter()
        payload, residual, _ = compression.encode_with_feedback(delta, residual, spec, round=r + 1, seed=r)
        compression.decode(payload)
        if r:  # the first pass warms up oneDNN and the codec
            codec_times.append(time.perf_counter() - start)
            train_times.append(t_train)
    return statistics.median(codec_times), statistics.median(train_times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--with-old-tree", action="store_true",
                    help="run against a checkout that predates eval-every (skip that simulation)")
    args = ap.parse_args()

    floors = floor_seconds(args.repeats)
    issue_floor = min(floors["one process, 2 threads"], floors["one process, 1 thread"])
    strict_floor = min(floors.values())
    ev = eval_seconds(args.repeats)
    sims = {label: simulated_rounds(preset, args.rounds, extra) for label, (preset, extra) in SIMULATIONS.items()
            if not (args.with_old_tree and extra)}
    data = data_path_samples_per_s(args.repeats)
    codec_s, train_s = codec_fraction(max(args.repeats, 5))

    def r(v: float) -> str:  # the two ratio columns of a row
        return f"{v / issue_floor:.2f}x | {v / strict_floor:.2f}x"

    print(f"workload: mcmahan-cnn, {CLIENTS} clients/round x 600 samples, {EPOCHS} epoch, batch {BATCH}; "
          f"{os.cpu_count()} CPUs; medians of {args.repeats} repeats ({args.rounds - 1} rounds for simulations)\n")
    print(f"issue floor (plain PyTorch, one process) = {issue_floor:.2f} s; "
          f"strict floor (best layout, two 1-thread processes) = {strict_floor:.2f} s\n")
    print("| measurement | value | / issue floor | / strict floor |")
    print("|---|---:|---:|---:|")
    for k, v in floors.items():
        print(f"| floor, plain PyTorch, {k} | {v:.2f} s | {r(v)} |")
    print(f"| one global evaluation, 10,000 test images, plain PyTorch | {ev:.2f} s | {r(ev)} |")
    print(f"| strict floor + eval (the work of one round, no Flower) | {strict_floor + ev:.2f} s | "
          f"{r(strict_floor + ev)} |")
    for p, (times, rss, rows) in sims.items():
        steady = rows[2:] if len(rows) > 2 else rows[1:]
        evaluates = not SIMULATIONS[p][1].get("eval-every")
        if not evaluates:  # its last round is evaluated: leave it out
            steady, times = steady[:-1], times[:-1]
        med = statistics.median(times[1:] if len(times) > 1 else times)

        def col(name: str, steady: list = steady) -> float:
            return statistics.median(float(row[name]) for row in steady) if steady and steady[0].get(name) \
                else float("nan")

        print(f"| **Flower simulation round, {p}** (median) | {med:.2f} s | **{r(med)}** |")
        print(f"| &nbsp;&nbsp;client phase (push to last reply) | {col('train_phase_s'):.2f} s | "
              f"{r(col('train_phase_s'))} |")
        print(f"| &nbsp;&nbsp;clients' own training, median per client x {CLIENTS} / 2 workers | "
              f"{col('client_train_s') * CLIENTS / 2:.2f} s | {r(col('client_train_s') * CLIENTS / 2)} |")
        if evaluates:
            # ledgers before 3c29e41 lack the column
            no_eval = statistics.median(float(row["round_s"]) - float(row["eval_s"]) for row in steady) \
                if steady and steady[0].get("eval_s") else float("nan")
            print(f"| &nbsp;&nbsp;server evaluation | {col('eval_s'):.2f} s | {r(col('eval_s'))} |")
            print(f"| &nbsp;&nbsp;the round minus its evaluation | {no_eval:.2f} s | {r(no_eval)} |")
            print(f"| &nbsp;&nbsp;round / (strict floor + eval) | {med / (strict_floor + ev):.2f}x | | |")
        print(f"| peak RSS, 100-client simulation, {p} | {rss / 2**20:,.0f} MiB | | |")
    print(f"| data path, this project (samples/s) | {data['ours']:,.0f} | "
          f"**{data['ours'] / data['torchvision']:.1f}x torchvision** | |")
    print(f"| data path, torchvision MNIST+ToTensor+Normalize+DataLoader | {data['torchvision']:,.0f} | 1.0x | |")
    print(f"| STC encode+decode per client | {codec_s * 1e3:.1f} ms | "
          f"**{100 * codec_s / train_s:.2f} % of training** ({train_s:.2f} s) | |")


if __name__ == "__main__":
    main()
