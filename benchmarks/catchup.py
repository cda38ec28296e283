"""Catch-up codecs on a real broadcast history: bytes and error against the chain they replace.

A client that missed the rounds ``s+1..t`` of a delta downlink is brought to the broadcast
model either by the chain of per-round payloads (exact) or by one catch-up payload, the
accumulated update ``b_t - b_s`` (the sum of the decoded chain) coded once
(:mod:`server.downlink`). This measures, on the payload history of a real run, what each
catch-up codec costs and how much of the accumulated update it leaves as the client's error:

    python -m benchmarks.catchup RUN_DIR [--out benchmarks/standard/catchup.md]

``RUN_DIR`` is a delta-downlink run with its checkpoint (checkpoints are not committed: re-run
the run, e.g. ``python -m simulations.sweep simulations/sweeps/standard.toml --out runs/standard
--only partition=iid --only seed=1 --only preset=stc-p400``, and the history is rebuilt bit for
bit). Per end version ``t`` and gap ``g``: chain bytes (the payloads ``t-g+1..t``), the size of
the accumulated update's support, and per codec its payload bytes, chain ÷ catch-up, and the
NMSE ``‖a − â‖² / ‖a‖²`` of the decoded catch-up ``â``. Payload bytes, no Flower envelope.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch

import compression
from fedsqueeze.config import load_preset
from server.checkpoint import read_checkpoint

log = logging.getLogger("benchmarks.catchup")
HERE = Path(__file__).resolve().parent
OUT = HERE / "standard" / "catchup.md"
SUPPORT = "prune=threshold,threshold=1e-12"  # every non-zero coordinate of the accumulated update


def codecs() -> dict[str, str]:
    """Label -> catch-up pipeline: the two presets' catch-ups and the union with 4 and 16 levels."""
    union = load_preset("stc-p400-union")["downlink-catchup"]
    return {
        "stc-p400 (top 3/400, ternary)": load_preset("stc-p400")["downlink-catchup"],
        "union, k-means 4": f"{SUPPORT},quant=kmeans,clusters=4,entropy=huffman,coder=golomb",
        "stc-p400-union (union, k-means 8)": union,
        "union, k-means 16": f"{SUPPORT},quant=kmeans,clusters=16,entropy=huffman,coder=golomb",
    }


@dataclass(frozen=True)
class Row:
    """One codec on the accumulated update of the versions ``end - gap + 1 .. end``."""

    end: int
    gap: int
    chain_bytes: int
    support: int
    codec: str
    catchup_bytes: int
    nmse: float


def accumulate(decoded: Sequence[Mapping[str, torch.Tensor]], start: int, end: int) -> dict[str, torch.Tensor]:
    """``b_end - b_start``: the sum of the decoded deltas ``start..end-1`` of a history."""
    total = {k: torch.zeros_like(v) for k, v in decoded[0].items()}
    for d in decoded[start:end]:
        for k, v in d.items():
            total[k] += v
    return total


def measure(history: Sequence[bytes], codecs: Mapping[str, str], ends: Sequence[int],
            gaps: Sequence[int], shapes: Mapping[str, tuple[int, ...]] | None = None) -> list[Row]:
    """Encode each accumulated update ``b_end - b_(end-gap)`` with every codec.

    ``history[i]`` takes version ``i`` to ``i + 1``; pairs with ``gap > end`` or
    ``end > len(history)`` are skipped. ``shapes``: the model's tensor names and
    shapes, needed when the history's payloads have compact headers.

    Raises
    ------
    ValueError
        An empty history (not a delta-downlink run) or a gap below 1.
    """
    if not history:
        raise ValueError("empty downlink history: the run has no delta downlink")
    if min(gaps, default=1) < 1:
        raise ValueError(f"gaps must be >= 1, got {sorted(gaps)}")
    decoded = [compression.decode(p, expected=shapes) for p in history]
    rows = []
    for end in ends:
        for gap in gaps:
            if gap > end or end > len(history):
                continue
            start = end - gap
            total = accumulate(decoded, start, end)
            support = sum(int((v != 0).sum()) for v in total.values())
            chain = sum(len(p) for p in history[start:end])
            for label, spec in codecs.items():
                # the report decodes the real payload: rel_distortion² is the NMSE (as in the atlas)
                payload, rep = compression.encode_with_report(total, spec, round=end, seed=end)
                rows.append(Row(end, gap, chain, support, label, len(payload), rep.rel_distortion ** 2))
    return rows


def markdown(rows: Sequence[Row], source: str) -> str:
    """The table: one line per (end, gap), bytes and NMSE per codec."""
    labels = list(dict.fromkeys(r.codec for r in rows))
    head = "| t | gap | chain bytes | support | " + " | ".join(f"{c}: bytes (chain ÷), NMSE" for c in labels) + " |"
    lines = ["# Catch-up codecs on a real broadcast history", "",
             f"Source: the delta-downlink history of `{source}`. For a client that missed versions "
             "t−gap+1..t: the chain's payload bytes, the number of non-zero coordinates of the accumulated "
             "update (support), and per catch-up codec its payload bytes, chain ÷ catch-up, and the NMSE of "
             "what it leaves as the client's error. Regenerate: `python -m benchmarks.catchup RUN_DIR`.", "",
             head, "|" + "---:|" * (4 + len(labels))]
    by_pair: dict[tuple[int, int], list[Row]] = {}
    for r in rows:
        by_pair.setdefault((r.end, r.gap), []).append(r)
    for (end, gap), group in by_pair.items():
        cells = {r.codec: f"{r.catchup_bytes:,} ({r.chain_bytes / r.catchup_bytes:.2f}×), {r.nmse:.4f}"
                 for r in group}
        lines.append(f"| {end} | {gap} | {group[0].chain_bytes:,} | {group[0].support:,} | "
                     + " | ".join(cells.get(c, "") for c in labels) + " |")
    return "\n".join(lines) + "\n"


def load_history(run_dir: Path) -> tuple[list[bytes], dict[str, tuple[int, ...]]]:
    """The delta-downlink payload history in ``run_dir``'s checkpoint, and the model's tensor shapes.

    Raises
    ------
    FileNotFoundError
        ``run_dir`` has no checkpoint.
    """
    ckpt = read_checkpoint(Path(run_dir))
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint (re-run the run to rebuild it)")
    return ckpt.history, {k: tuple(v.shape) for k, v in ckpt.broadcast.items()}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a delta-downlink run folder with its checkpoint")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--ends", default="40,80", help="end versions t (comma-separated)")
    parser.add_argument("--gaps", default="1,3,5,10,20,40,80", help="gaps (comma-separated)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[catchup] %(message)s")
    history, shapes = load_history(args.run_dir)
    rows = measure(history, codecs(), _ints(args.ends), _ints(args.gaps), shapes)
    args.out.write_text(markdown(rows, args.run_dir.name))
    log.info("wrote %s (%d measurements)", args.out, len(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
