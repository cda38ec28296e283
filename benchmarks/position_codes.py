"""Position coders on one run's real downlink messages, the run's choices held fixed.

Every message a delta-downlink run sent (``clients.csv``: a chain of broadcast payloads or one
catch-up, ``server.downlink``) is re-coded with each position coder (``coder=golomb``,
``coder=grid``, ...; see :mod:`compression.positions`). Values are untouched, so each coder
sends the same model: only position bytes differ. Chains re-code the run's own broadcast
payloads; catch-ups re-code the accumulated update ``b_t - b_s`` with the run's catch-up
pipeline (without the per-client catch-up error the run added, so they are slightly smaller
than the run's):

    python -m benchmarks.position_codes RUN_DIR [--out benchmarks/standard/position_codes.md]

``RUN_DIR`` needs its checkpoint (see :mod:`benchmarks.catchup`). Payload bytes, no Flower
envelope. Because sizes steer the server's cheapest-of choice between chain and catch-up, a run
with another coder is not message for message this one; this table compares coders on the
same messages.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import compression
from benchmarks.catchup import accumulate, load_history

log = logging.getLogger("benchmarks.position_codes")

OUT = Path(__file__).resolve().parent / "standard" / "position_codes.md"
CODERS = ("golomb", "grid")


@dataclass(frozen=True)
class Row:
    kind: str  # chain or catchup
    messages: int
    gap: float  # mean versions behind
    bytes: dict[str, int]  # coder -> payload bytes of all these messages


def _recoded(update, spec: compression.PipelineSpec, coder: str, round_: int) -> int:
    return len(compression.encode(update, dataclasses.replace(spec, coder=coder), round=round_, seed=round_))


def measure(history: Sequence[bytes], shapes, messages: Sequence[tuple[str, int, int]],
            catchup: str, coders: Sequence[str] = CODERS) -> list[Row]:
    """Payload bytes of ``messages`` (kind, base version, target version) under each coder.

    ``history[i]`` takes version ``i`` to ``i + 1``; ``catchup`` is the run's catch-up
    pipeline. Messages of another kind (the float32 model) are skipped.

    Raises
    ------
    ValueError
        An empty history, or a message outside it.
    """
    if not history:
        raise ValueError("empty downlink history: the run has no delta downlink")
    decoded = [compression.decode(p, expected=shapes) for p in history]
    specs = [compression.peek_spec(p) for p in history]
    chain_cost = {(v, c): _recoded(decoded[v], specs[v], c, v + 1) for v in range(len(history))
                  for c in coders}
    catchup_spec = compression.parse_spec(catchup) if catchup else None
    catchup_cost: dict[tuple[int, int, str], int] = {}
    rows: dict[str, dict] = {}
    for kind, start, end in messages:
        if kind not in ("chain", "catchup"):
            continue
        if not 0 <= start < end <= len(history) or (kind == "catchup" and catchup_spec is None):
            raise ValueError(f"{kind} {start}->{end} is not in a history of {len(history)} versions")
        acc = rows.setdefault(kind, {"n": 0, "gap": 0, "bytes": dict.fromkeys(coders, 0)})
        acc["n"] += 1
        acc["gap"] += end - start
        for c in coders:
            if kind == "chain":
                acc["bytes"][c] += sum(chain_cost[v, c] for v in range(start, end))
            else:
                if (start, end, c) not in catchup_cost:
                    total = accumulate(decoded, start, end)
                    catchup_cost[start, end, c] = _recoded(total, catchup_spec, c, end)
                acc["bytes"][c] += catchup_cost[start, end, c]
    return [Row(k, v["n"], v["gap"] / v["n"], v["bytes"]) for k, v in rows.items()]


def read_messages(run_dir: Path) -> list[tuple[str, int, int]]:
    """(kind, base version, target version) of every downlink message in ``clients.csv``."""
    with open(Path(run_dir) / "clients.csv", newline="") as fh:
        return [(r["downlink_kind"], int(r["base_version"]), int(r["target_version"])) for r in csv.DictReader(fh)]


def markdown(rows: Sequence[Row], source: str) -> str:
    coders = list(rows[0].bytes) if rows else list(CODERS)
    base = coders[0]
    lines = ["# Position coders on a run's downlink messages", "",
             f"Source: `{source}` (its checkpointed broadcast history and `clients.csv`). Every chain and "
             "catch-up the run sent, re-coded with each position coder; values, and so the model each client "
             "receives, are the same. Mean payload bytes per message and the saving against "
             f"`coder={base}`. Regenerate: `python -m benchmarks.position_codes RUN_DIR`.", "",
             "| messages | count | mean gap | " + " | ".join(f"`{c}` bytes" for c in coders) + " | saving |",
             "|---|---:|---:|" + "---:|" * len(coders) + "---:|"]
    total = dict.fromkeys(coders, 0)
    for r in rows + [Row("all", sum(r.messages for r in rows), 0.0, total)]:
        if r.kind != "all":
            for c in coders:
                total[c] += r.bytes[c]
        saving = " / ".join(f"{1 - r.bytes[c] / r.bytes[base]:.1%}" for c in coders[1:])
        gap = f"{r.gap:.1f}" if r.kind != "all" else ""
        lines.append(f"| {r.kind} | {r.messages} | {gap} | "
                     + " | ".join(f"{r.bytes[c] / r.messages:,.0f}" for c in coders) + f" | {saving} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a delta-downlink run folder with its checkpoint")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[position-codes] %(message)s")
    history, shapes = load_history(args.run_dir)
    config = json.loads((args.run_dir / "summary.json").read_text())["config"]
    rows = measure(history, shapes, read_messages(args.run_dir), config.get("downlink-catchup", ""))
    args.out.write_text(markdown(rows, args.run_dir.name))
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
