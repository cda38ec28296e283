"""Stage measurements: accuracy, non-zero parameters, artifact size, CPU latency."""

from __future__ import annotations

import copy
import os
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from fedsqueeze.train import evaluate, train

from .export import file_size, load_artifact, save_artifact
from .quantize import default_input_shape, is_pt2e_int8, lower_int8_x86

__all__ = [
    "count_nonzero",
    "latency_ms",
    "stage_report",
    "markdown_table",
    "measure_bf16_training",
    "single_thread",
]

# Quantization metadata of PT2E graphs (per-channel scales / zero points), not model weights.
_QUANT_METADATA = ("_scale_", "_zero_point_")


@contextmanager
def single_thread() -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(1)``, restoring the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _storage(t: torch.Tensor) -> torch.Tensor:
    # torchao's Int8Tensor keeps its integer values in .qdata.
    return t.qdata if hasattr(t, "qdata") else t


def count_nonzero(model: nn.Module) -> int:
    """Non-zero entries over all weights and biases, whatever their dtype.

    Counts every parameter and buffer except PT2E quantization scales/zero
    points, so a float model and its int8 version with the same zeros count
    the same. The model is not mutated.
    """
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    return sum(
        int(torch.count_nonzero(_storage(t.detach())))
        for name, t in tensors.items()
        if not any(tag in name.rpartition(".")[2] for tag in _QUANT_METADATA)
    )


def latency_ms(model: nn.Module, batch: int, repeats: int = 50, warmup: int = 5, x: torch.Tensor | None = None) -> float:
    """Median wall time (ms) of one forward pass on ``batch`` images, single-threaded.

    Runs under ``torch.set_num_threads(1)`` so numbers are comparable across
    stages and not disturbed by other jobs competing for the cores. Inputs
    are ``x[:batch]`` (copied) or random images. The model is not mutated.
    """
    xb = (x[:batch].clone() if x is not None else torch.randn(batch, *default_input_shape()))
    if len(xb) != batch:
        raise ValueError(f"need {batch} inputs, got {len(xb)}")
    times = []
    with single_thread(), torch.no_grad():
        for _ in range(warmup):
            model(xb)
        for _ in range(repeats):
            start = time.perf_counter()
            model(xb)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _runner(model: nn.Module, batch: int) -> tuple[nn.Module, str]:
    """The fastest way this CPU runs ``model`` at ``batch``, and its label."""
    if not is_pt2e_int8(model):
        return model, "eager"
    try:
        return lower_int8_x86(model, batch), "onednn-int8"
    except Exception as exc:  # noqa: BLE001 - report the reference path instead of dying
        return model, f"reference-q/dq ({type(exc).__name__})"


def stage_report(
    name: str,
    model: nn.Module,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    path: str | os.PathLike,
    repeats: int = 50,
    device: torch.device | str | None = None,
) -> dict:
    """Save ``model`` to ``path`` (.pt2), reload it, and measure the reloaded artifact.

    Parameters
    ----------
    name : str
        Stage label.
    model : nn.Module
        Not mutated (its eval mode is set by ``evaluate``).
    x_test, y_test : Tensor
        Test set; also the source of latency inputs.
    path : path-like
        Where the artifact is written (overwritten).
    repeats : int
        Timed forward passes per latency (median reported).
    device : torch.device or str, optional
        Where ``accuracy`` of a plain float model is measured (default: where it is).
        Quantized models, the reloaded artifact and every latency stay on the CPU:
        they measure the CPU deployment artifact (oneDNN int8 kernels, one thread),
        so on a GPU ``accuracy`` and ``reloaded_accuracy`` may differ in the last digits.

    Returns
    -------
    dict
        ``stage``, ``accuracy`` (in-memory model), ``reloaded_accuracy`` (the
        artifact; equal unless export changed something), ``nonzero_params``,
        ``size_bytes``, ``latency_b64_ms``, ``latency_b1_ms`` (reloaded
        artifact, one thread; int8 graphs lowered onto oneDNN int8 kernels),
        ``latency_b64_asloaded_ms`` (the artifact run as loaded), ``executor``.
    """
    _, accuracy = evaluate(model, x_test, y_test, device=device if _plain_float(model) else None)
    save_artifact(model, path, input_shape=tuple(x_test.shape[1:]))
    reloaded = load_artifact(path)
    _, reloaded_accuracy = evaluate(reloaded, x_test, y_test)
    fast64, executor = _runner(reloaded, 64)
    fast1, _ = _runner(reloaded, 1)
    return {
        "stage": name,
        "accuracy": accuracy,
        "reloaded_accuracy": reloaded_accuracy,
        "nonzero_params": count_nonzero(reloaded),
        "size_bytes": file_size(path),
        "latency_b64_ms": latency_ms(fast64, 64, repeats, x=x_test),
        "latency_b1_ms": latency_ms(fast1, 1, repeats, x=x_test),
        "latency_b64_asloaded_ms": latency_ms(reloaded, 64, repeats, x=x_test),
        "executor": executor,
    }


def _plain_float(model: nn.Module) -> bool:
    """True if every tensor of ``model`` is an ordinary float tensor (safe to move to another device)."""
    tensors = [*model.parameters(), *model.buffers()]
    return not is_pt2e_int8(model) and all(type(t) in (torch.Tensor, nn.Parameter) and t.is_floating_point()
                                           for t in tensors)


def markdown_table(rows: Sequence[Mapping]) -> str:
    """Render :func:`stage_report` dicts as a markdown table (sizes in KiB)."""
    header = (
        "| stage | acc | acc reloaded | nonzero params | size KiB | x smaller | b64 ms | b1 ms | b64 ms as loaded | executor |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    base = rows[0]["size_bytes"] if rows else 1
    lines = [
        f"| {r['stage']} | {r['accuracy']:.4f} | {r['reloaded_accuracy']:.4f} | {r['nonzero_params']:,} | "
        f"{r['size_bytes'] / 1024:.1f} | {base / r['size_bytes']:.2f} | {r['latency_b64_ms']:.2f} | "
        f"{r['latency_b1_ms']:.3f} | {r['latency_b64_asloaded_ms']:.2f} | {r['executor']} |"
        for r in rows
    ]
    return "\n".join([header, *lines])


def measure_bf16_training(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    **train_kwargs,
) -> dict[str, dict[str, float]]:
    """Train two copies of ``model`` (float32 vs bf16 autocast) identically; compare.

    ``train_kwargs`` go to ``fedsqueeze.train.train`` (epochs, batch_size,
    lr, ...; not ``bf16_autocast``). The input model is not mutated.

    Returns
    -------
    dict
        ``{"fp32": {...}, "bf16": {...}}`` each with ``accuracy``,
        ``train_seconds`` and ``final_loss``.
    """
    out = {}
    for label, amp in (("fp32", False), ("bf16", True)):
        replica = copy.deepcopy(model)
        result = train(replica, x, y, bf16_autocast=amp, **train_kwargs)
        _, acc = evaluate(replica, x_test, y_test)
        out[label] = {"accuracy": acc, "train_seconds": result.seconds, "final_loss": result.loss}
    return out
