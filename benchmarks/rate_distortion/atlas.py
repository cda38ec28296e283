"""Rate-distortion atlas: every compressor on real client updates, bits against normalized MSE.

For each captured update ``x`` (see :mod:`.capture`) and each compressor
setting, the update is encoded with the real codec
(:func:`compression.encode_with_report`, which decodes the real payload):

* **rate** ``R = 8 * len(payload) / numel`` bits per coordinate: the whole
  payload (header, positions, scales, padding, CRC), as it would cross the
  wire inside the Flower message;
* **distortion** ``NMSE = ||x - decode(payload)||^2 / ||x||^2``.

One update at a time and no error feedback: this is the distortion of one
message.  What error feedback, FetchSGD's server-side accumulation or
PowerSGD's warm start recover over rounds is not in these numbers (FetchSGD
rows show what one client's sketch yields on its own; PowerSGD rows start
cold).
"""

from __future__ import annotations

import csv
import logging
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import compression

log = logging.getLogger(__name__)

__all__ = [
    "SETTINGS",
    "Row",
    "Setting",
    "evaluate",
    "gaussian_nmse",
    "plot",
    "read_csv",
    "write_csv",
    "write_markdown",
]


@dataclass(frozen=True)
class Setting:
    """One point of a compressor's curve: ``family`` (legend), ``label`` (the point) and its spec."""

    family: str
    label: str
    spec: str


def _settings() -> list[Setting]:
    out: list[Setting] = []

    def add(fam: str, lab: str, spec: str) -> None:
        out.append(Setting(fam, lab, spec))

    for k in (0.001, 0.01, 0.05, 0.2):
        add("topk (fp32 values)", f"keep={k}", f"prune=topk,keep={k}")
    for k in (0.001, 0.01, 0.05, 0.2):
        add("topk+ternary (stc)", f"keep={k}", f"prune=topk,keep={k},quant=ternary")
    for k in (0.01, 0.1, 0.3):
        add("randk (fp32 values)", f"keep={k}", f"prune=randk,keep={k}")
    for b in (2, 3, 4, 8):
        add("qsgd", f"bits={b}", f"quant=qsgd,bits={b}")
    for b in (2, 3, 4, 8):
        add("uniform (per channel)", f"bits={b}", f"quant=uniform,bits={b},granularity=channel")
    add("sign (signsgd-ef)", "1 bit", "quant=sign")
    add("sign (signsgd-ef)", "1 bit, per channel", "quant=sign,granularity=channel")
    for c in (2, 4, 16):
        add("kmeans", f"clusters={c}", f"quant=kmeans,clusters={c}")
    add("drive", "unbiased", "quant=drive")
    add("drive", "biased", "quant=drive,unbiased=false")
    for b in (1, 2, 3, 4):
        add("eden (unbiased)", f"bits={b}", f"quant=eden,bits={b}")
    for b in (1, 2, 4):
        add("eden (biased)", f"bits={b}", f"quant=eden,bits={b},unbiased=false")
    for r in (1, 2, 4, 8, 16, 32):
        add("powersgd (1 step, cold)", f"rank={r}", f"quant=powersgd,rank={r}")
    for size, keep in ((0.05, 0.001), (0.1, 0.002), (0.25, 0.01), (0.5, 0.01), (1.0, 0.05)):
        add("fetchsgd (1 sketch)", f"size={size},keep={keep}", f"quant=fetchsgd,sketch-size={size},keep={keep}")
    return out


#: Every compressor setting the atlas evaluates.
SETTINGS: tuple[Setting, ...] = tuple(_settings())


@dataclass(frozen=True)
class Row:
    """One (update, setting) measurement."""

    partition: str
    round: int
    family: str
    label: str
    spec: str
    num_params: int
    payload_bytes: int
    bits_per_coord: float
    nmse: float


def evaluate(updates: Mapping[tuple[str, int], Mapping[str, torch.Tensor]],
             settings: Iterable[Setting] = SETTINGS) -> list[Row]:
    """Encode every update with every setting; one :class:`Row` each.

    ``updates`` maps ``(partition label, round)`` to an update.  Encoding uses
    ``round`` and seed 0, so rows are deterministic.
    """
    rows = []
    settings = list(settings)
    for (part, rnd), update in updates.items():
        for s in settings:
            payload, rep = compression.encode_with_report(update, s.spec, round=rnd, seed=0)
            rows.append(Row(part, rnd, s.family, s.label, str(compression.parse_spec(s.spec)), rep.num_params,
                            len(payload), 8 * len(payload) / rep.num_params, rep.rel_distortion ** 2))
        log.info("atlas: %s round %d: %d settings", part, rnd, len(settings))
    return rows


_FIELDS = [f for f in Row.__dataclass_fields__]


def write_csv(rows: Sequence[Row], path: Path) -> None:
    """All rows, full precision."""
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=_FIELDS)
        w.writeheader()
        for r in rows:
            d = asdict(r)
            d["bits_per_coord"] = f"{r.bits_per_coord:.6f}"
            d["nmse"] = f"{r.nmse:.6g}"
            w.writerow(d)


def read_csv(path: Path) -> list[Row]:
    """Rows written by :func:`write_csv`."""
    with open(path, newline="") as fh:
        return [Row(d["partition"], int(d["round"]), d["family"], d["label"], d["spec"], int(d["num_params"]),
                    int(d["payload_bytes"]), float(d["bits_per_coord"]), float(d["nmse"]))
                for d in csv.DictReader(fh)]


def gaussian_nmse(bits: float) -> float:
    """Distortion-rate function of an i.i.d. Gaussian source, normalized: ``2^(-2R)``."""
    return 2.0 ** (-2.0 * bits)


def _key(r: Row) -> tuple[str, str]:
    return r.family, r.label


def write_markdown(rows: Sequence[Row], path: Path, rounds_note: str) -> None:
    """Per setting and partition: bits per coordinate and NMSE per captured round, and the Gaussian bound."""
    parts = sorted({r.partition for r in rows})
    rounds = sorted({r.round for r in rows})
    order = list(dict.fromkeys(_key(r) for r in rows))
    lines = ["# Rate-distortion atlas: normalized MSE against bits per coordinate on real updates", "",
             rounds_note, "",
             ("Both columns are measured from the real payload bytes (`8 * len(payload) / numel`) and the real "
             "decode (`||x - x_hat||^2 / ||x||^2`). *Gaussian D(R)* is `2^(-2R)` at the measured rate; "
             "*vs D(R)* is NMSE / D(R) (below 1: better than any code could do on an i.i.d. Gaussian source of "
             "the same variance; see `README.md` in this folder for what that does and does not mean)."), ""]
    for part in parts:
        lines += [f"## Partition `{part}`", "",
                  "| compressor | setting | bits/coord | " + " | ".join(f"NMSE r{r}" for r in rounds)
                  + " | mean NMSE | Gaussian D(R) | vs D(R) |",
                  "|---|---|---:|" + "---:|" * len(rounds) + "---:|---:|---:|"]
        for fam, lab in order:
            sel = {r.round: r for r in rows if r.partition == part and _key(r) == (fam, lab)}
            if not sel:
                continue
            bits = statistics.fmean(r.bits_per_coord for r in sel.values())
            nmse = statistics.fmean(r.nmse for r in sel.values())
            cells = " | ".join(f"{sel[r].nmse:.4g}" if r in sel else "—" for r in rounds)
            lines.append(f"| {fam} | {lab} | {bits:.4g} | {cells} | {nmse:.4g} | {gaussian_nmse(bits):.3g} | "
                         f"{nmse / gaussian_nmse(bits):.3g} |")
        lines.append("")
    path.write_text("\n".join(lines))


def plot(rows: Sequence[Row], path: Path, title: str) -> None:
    """Log-log NMSE against bits per coordinate, one panel per partition, mean over captured rounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = sorted({r.partition for r in rows})
    fams = list(dict.fromkeys(r.family for r in rows))
    cmap = plt.get_cmap("tab20")
    fig, axes = plt.subplots(1, len(parts), figsize=(7.5 * len(parts), 6.5), squeeze=False)
    for ax, part in zip(axes[0], parts):
        for i, fam in enumerate(fams):
            pts = {}
            for r in rows:
                if r.partition == part and r.family == fam:
                    pts.setdefault(r.label, []).append(r)
            xy = sorted((statistics.fmean(x.bits_per_coord for x in v), statistics.fmean(x.nmse for x in v))
                        for v in pts.values())
            if xy:
                ax.plot([p[0] for p in xy], [p[1] for p in xy], marker="os^vD<>ph*"[i % 10], color=cmap(i % 20),
                        label=fam, lw=1.2, ms=5)
        grid = [10 ** (e / 50) for e in range(-150, 101)]
        ax.plot(grid, [gaussian_nmse(b) for b in grid], "k--", lw=1.5, label="Gaussian D(R) = 2^(-2R)")
        ax.axvline(1.0, color="0.6", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(0.01, 40)
        ax.set_ylim(1e-4, 10)  # qsgd's per-tensor-norm points (NMSE 2.9 to 500) are above the frame
        ax.set_xlabel("bits per coordinate (from payload bytes)")
        ax.set_ylabel("normalized MSE ||x - x̂||² / ||x||²")
        ax.set_title(f"{title} — {part}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=7.5, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def at_one_bit(rows: Sequence[Row]) -> list[tuple[str, str, str, float, float]]:
    """(partition, family, label, bits, mean NMSE) of the settings near 1 bit/coordinate (0.9-1.2)."""
    out = []
    for part in sorted({r.partition for r in rows}):
        for fam, lab in dict.fromkeys(_key(r) for r in rows):
            sel = [r for r in rows if r.partition == part and _key(r) == (fam, lab)]
            bits = statistics.fmean(r.bits_per_coord for r in sel) if sel else math.nan
            if sel and 0.9 <= bits <= 1.2:
                out.append((part, fam, lab, bits, statistics.fmean(r.nmse for r in sel)))
    return out
