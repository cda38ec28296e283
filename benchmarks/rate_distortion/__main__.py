"""Regenerate the atlas: ``python -m benchmarks.rate_distortion [--cache DIR] [--out DIR]``.

Captures (or reads from the cache) real McMahan-CNN client updates of a
seeded float32 FedAvg run, IID and 2 shards per client, at the early,
middle and late capture rounds; encodes each with every compressor setting
of :data:`.atlas.SETTINGS`; writes ``table.csv`` (every measurement),
``table.md`` (per setting, with the Gaussian reference and the ~1 bit
comparison) and ``atlas.png`` into the output folder.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from . import atlas
from .capture import CaptureSpec, load_or_capture

log = logging.getLogger("benchmarks.rate_distortion")
HERE = Path(__file__).resolve().parent
CAPTURES = (CaptureSpec(partition="iid"), CaptureSpec(partition="shards", shards_per_client=2))


def rounds_note(specs=CAPTURES) -> str:
    s = specs[0]
    return (f"Updates: the first sampled client's update (before compression) in rounds "
            f"{', '.join(map(str, s.rounds))} (early, middle, late) of a float32 FedAvg run of the "
            f"{s.model} ({s.num_clients} clients, {round(s.fraction * s.num_clients)} per round, "
            f"E={s.local_epochs}, B={s.batch_size}, lr={s.lr}, seed {s.seed}), IID and 2 shards per client; "
            "regenerated from the seed by `python -m benchmarks.rate_distortion`.")


def one_bit_section(rows) -> str:
    near = atlas.at_one_bit(rows)
    lines = ["", "## At about 1 bit per coordinate", "",
             "| partition | compressor | setting | bits/coord | mean NMSE |", "|---|---|---|---:|---:|"]
    lines += [f"| {p} | {f} | {lab} | {b:.3f} | {n:.4f} |" for p, f, lab, b, n in near]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default="runs/rate_distortion_captures", help="captured updates (not committed)")
    ap.add_argument("--out", default=str(HERE), help="where table.csv, table.md and atlas.png go")
    ap.add_argument("--from-table", action="store_true",
                    help="only redraw table.md and atlas.png from the existing table.csv (no capture, no encoding)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.from_table:
        torch.set_num_threads(1)  # the machines this runs on are shared; one thread avoids oversubscription
        updates = {}
        for spec in CAPTURES:
            part = "iid" if spec.partition == "iid" else f"shards{spec.shards_per_client}"
            for rnd, upd in load_or_capture(spec, Path(args.cache)).items():
                updates[(part, rnd)] = upd
        atlas.write_csv(atlas.evaluate(updates), out / "table.csv")
    render(out)
    return 0


def render(out: Path) -> None:
    """``table.md`` and ``atlas.png`` from ``table.csv`` alone (so both are derivable from the committed table)."""
    rows = atlas.read_csv(out / "table.csv")
    (out / "table.md").write_text(markdown(rows))
    atlas.plot(rows, out / "atlas.png", "McMahan CNN client updates")
    log.info("atlas: %d rows -> %s", len(rows), out)


def markdown(rows) -> str:
    """The text of ``table.md`` for these rows."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "table.md"
        atlas.write_markdown(rows, path, rounds_note())
        return path.read_text() + one_bit_section(rows)


if __name__ == "__main__":
    sys.exit(main())
