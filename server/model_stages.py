"""Model-level compression of the global model after the last round (issue 6).

The stages run in this order, each optional (``[tool.flwr.app.config]``)::

    float32 ─► prune to s1 ─► federated fine-tune (masks fixed) ─► prune to s2 ─► ...
            ─► static int8 (federated calibration) / dynamic int8 / bf16 / fp16
            ─► federated QAT rounds (masks fixed) ─► int8 from the QAT weights

* Pruning runs on the server (``torch.nn.utils.prune`` via
  :mod:`fedsqueeze.modelzip`): global or per-layer L1, L2-structured output
  channels, or importance = federated Taylor scores (clients send
  ``sum |w * dL/dw|`` on their data, the server adds them).
* Fine-tune and QAT rounds are ordinary federated rounds (same sampling,
  codecs and ledger, ``phase`` column set) whose train messages also carry
  the masks; clients keep pruned weights at zero and the server re-masks
  decoded updates and the aggregate.
* Static int8 needs activation ranges: sampled clients observe them on their
  own data and the server merges them (min of mins, max of maxes).

Every stage is saved as a ``.pt2`` artifact under ``<out-dir>/artifacts``,
reloaded, and measured (accuracy, non-zeros, file size, latency at batch 64
and 1); the table goes to ``model_stages.csv`` / ``model_stages.md``.
Federated traffic of each stage (fine-tune rounds, queries) is in its row;
fine-tune and QAT rounds are in ``metrics.csv`` too.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import zstandard
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

import compression
from fedsqueeze import modelzip as mz
from fedsqueeze.datasets import get_dataset, test_tensors
from fedsqueeze.device import resolve_device
from fedsqueeze.log import get_logger
from fedsqueeze.models import build_model
from fedsqueeze.modelzip.masks import pack_masks
from fedsqueeze.protocol.instructions import StageQuery, metrics_to_ranges
from fedsqueeze.protocol.messages import CONFIG, METRICS, MODEL, UPDATE, payloads_record, record_payloads
from server.accounting import messages_bytes
from server.exchange import exchange
from server.rounds import FederationRun, RoundMode, RoundRunner, sample_partitions

__all__ = ["run_model_stages", "STAGE_COLUMNS"]

STAGE_COLUMNS = (
    "stage", "accuracy", "reloaded_accuracy", "agreement", "nonzero_params", "sparsity", "size_bytes",
    "x_smaller", "zstd_bytes", "latency_b64_ms", "latency_b1_ms", "executor", "rounds", "uplink_bytes", "downlink_bytes",
    "seconds", "artifact",
)
_PRUNERS: dict[str, Callable[..., dict[str, torch.Tensor]]] = {
    "global-l1": mz.prune_global_l1,
    "layer-l1": mz.prune_layer_l1,
    "structured-l2": mz.prune_structured_ln,
}

_log = get_logger(__name__).info


class _Stages:
    """The stage loop's state: the run, its test set, the rows written so far."""

    def __init__(self, run: FederationRun, grid: Grid, nodes: dict[int, int], run_round: RoundRunner):
        self.run, self.grid, self.nodes = run, grid, nodes
        self.run_round = run_round
        self.cfg = run.cfg
        self.x, self.y = test_tensors(self.cfg.dataset, self.cfg.data_dir or None)
        self.device = resolve_device(self.cfg.device)  # float evaluation; int8 stages and latencies stay on the CPU
        self.dir = run.out_dir / "artifacts"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []
        self.round = int(run.ledger.rows[-1]["round"])
        self.float_size = 0
        self.masks: dict[str, torch.Tensor] | None = None

    def model(self) -> torch.nn.Module:
        model = build_model(self.cfg.model, self.cfg.dataset)
        model.load_state_dict(self.run.weights)
        return model.eval()

    # ------------------------------------------------------------------ measuring
    def report(self, stage: str, model: torch.nn.Module, *, reference: torch.nn.Module | None = None,
               traffic: tuple[int, int, int] = (0, 0, 0), started: float) -> None:
        """Save, reload and measure ``model``; append its row to the stage table (written durably)."""
        slug = stage.lower().replace(" ", "-").replace("%", "").replace("+", "").replace("--", "-")
        path = self.dir / f"{len(self.rows):02d}-{slug}.pt2"
        rep = mz.stage_report(stage, model, self.x, self.y, path, device=self.device)
        if not self.float_size:
            self.float_size = rep["size_bytes"]
        rounds, up, down = traffic
        row = {
            **{k: rep[k] for k in ("stage", "accuracy", "reloaded_accuracy", "nonzero_params", "size_bytes",
                                   "latency_b64_ms", "latency_b1_ms", "executor")},
            "agreement": _agreement(model, reference, self.x) if reference is not None else "",
            "sparsity": round(mz.sparsity(reference if reference is not None else model), 4),
            "x_smaller": round(self.float_size / rep["size_bytes"], 2),
            # .pt2 stores pruned tensors densely; compressing the file shows what the zeros save on disk
            "zstd_bytes": len(zstandard.ZstdCompressor(level=10).compress(path.read_bytes())),
            "rounds": rounds, "uplink_bytes": up, "downlink_bytes": down,
            "seconds": round(time.perf_counter() - started, 1), "artifact": path.name,
        }
        self.rows.append(row)
        _write_tables(self.run.out_dir, self.rows)
        _log(f"stage {stage}: acc={row['accuracy']:.4f} nonzero={row['nonzero_params']:,} "
             f"size={row['size_bytes']:,}B (x{row['x_smaller']}) b64={row['latency_b64_ms']:.2f}ms "
             f"b1={row['latency_b1_ms']:.3f}ms")

    # ------------------------------------------------------------------ federated pieces
    def fl_rounds(self, n: int, phase: str, *, qat: bool = False) -> tuple[int, int, int]:
        """``n`` federated rounds with the current masks; returns (rounds, uplink, downlink bytes)."""
        mode = RoundMode(phase=phase, masks=self.masks, mask_payload=pack_masks(self.masks) if self.masks else b"",
                         qat=qat, lr=self.cfg.finetune_lr or None)
        up = down = 0
        for _ in range(n):
            self.round += 1
            row = self.run_round(self.round, mode)
            up, down = up + row.uplink_bytes, down + row.downlink_bytes
        return n, up, down

    def query(self, op: str) -> tuple[list[Message], int, int]:
        """Send a stage query with the float32 global model to ``stage-clients`` sampled clients."""
        c = self.cfg
        sampled = sample_partitions(list(self.nodes), c.replace(fraction_train=1.0, min_train_nodes=1),
                                    self.round)[: c.stage_clients]
        q = StageQuery(op=op, seed=c.seed, model=c.model, partition=c.partition, dirichlet_alpha=c.dirichlet_alpha,
                       shards_per_client=c.shards_per_client, data_dir=c.data_dir,
                       calibration_images=c.calibration_images, dataset=c.dataset, device=c.device)
        model = compression.encode(self.run.weights, "fp32")
        msgs = [Message(RecordDict({CONFIG: ConfigRecord(q.to_record()), MODEL: payloads_record([model])}),
                        self.nodes[pid], "query", group_id=f"{op}-{self.round}") for pid in sampled]
        down = messages_bytes(msgs)
        replies = exchange(self.grid, msgs, timeout=c.round_timeout or None)
        up = messages_bytes(replies)
        good = []
        for r in replies:
            if r.has_error():
                _log(f"{op} query: node {r.metadata.src_node_id} failed: {r.error.reason[:160]}")
            else:
                good.append(r)
        if not good:
            raise RuntimeError(f"{op} query: no client answered")
        return good, up, down

    def calibration_ranges(self, model: torch.nn.Module) -> tuple[dict[str, tuple[float, float]], int, int]:
        """Merged activation ranges of ``model`` (must equal the current global weights) from the clients."""
        expected = list(mz.observe_ranges(model, self.x[:1]))  # node names only; no statistics kept
        replies, up, down = self.query("calibrate")
        ranges = []
        for r in replies:
            try:
                ranges.append(metrics_to_ranges(r.content[METRICS], expected))
            except (KeyError, ValueError) as exc:
                _log(f"calibrate: ignoring node {r.metadata.src_node_id}: {exc}")
        if not ranges:
            raise RuntimeError("calibrate: no valid ranges")
        return mz.merge_ranges(ranges), up, down

    def taylor_scores(self) -> tuple[dict[str, torch.Tensor], int, int]:
        """Sum of the clients' Taylor scores of the current global model."""
        prunable = mz.prunable_names(build_model(self.cfg.model, self.cfg.dataset))
        shapes = {k: tuple(self.run.weights[k].shape) for k in prunable}
        replies, up, down = self.query("scores")
        scores = []
        for r in replies:
            try:
                (payload,) = record_payloads(r.content[UPDATE])
                scores.append(compression.decode(payload, expected=shapes))
            except (KeyError, ValueError) as exc:
                _log(f"scores: ignoring node {r.metadata.src_node_id}: {exc}")
        if not scores:
            raise RuntimeError("scores: no valid replies")
        return mz.add_scores(scores), up, down


def _agreement(model: torch.nn.Module, reference: torch.nn.Module, x: torch.Tensor) -> float:
    """Fraction of ``x`` on which both models predict the same class."""
    with torch.no_grad():
        a = torch.cat([model(x[i : i + 500]).argmax(1) for i in range(0, len(x), 500)])
        b = torch.cat([reference(x[i : i + 500]).argmax(1) for i in range(0, len(x), 500)])
    return round(float((a == b).float().mean()), 5)


def _write_tables(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    tmp = out_dir / "model_stages.csv.tmp"
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=STAGE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out_dir / "model_stages.csv")
    (out_dir / "model_stages.md").write_text(stage_table(rows))


def stage_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the stage rows."""
    head = ("| stage | accuracy | agreement | non-zero params | sparsity | .pt2 size | x smaller | .pt2.zst | "
            "latency b64 | latency b1 | rounds | uplink | downlink |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    body = "".join(
        f"| {r['stage']} | {r['accuracy']:.4f} | {r['agreement'] or ''} | {r['nonzero_params']:,} | {r['sparsity']:.2f} | "
        f"{r['size_bytes'] / 1024:,.1f} KiB | {r['x_smaller']:.2f} | {r['zstd_bytes'] / 1024:,.1f} KiB | "
        f"{r['latency_b64_ms']:.2f} ms | "
        f"{r['latency_b1_ms']:.3f} ms | {r['rounds']} | {r['uplink_bytes'] / 1e6:,.2f} MB | {r['downlink_bytes'] / 1e6:,.2f} MB |\n"
        for r in rows)
    return head + body


def run_model_stages(run: FederationRun, grid: Grid, nodes: dict[int, int],
                     run_round: RoundRunner) -> list[dict[str, Any]]:
    """Compress ``run.weights`` stage by stage (see module docstring); return the stage rows.

    Parameters
    ----------
    run : FederationRun
        The finished training run; ``run.weights`` is replaced (pruning) and
        advanced by the fine-tune and QAT rounds.
    grid : Grid
        Flower's grid, for the stage queries (calibration ranges, Taylor scores).
    nodes : dict of int to int
        Partition id → node id of the federation (from the handshake).
    run_round : RoundRunner
        Runs and records one fine-tune / QAT round (numbered after the last
        ledger row).

    Returns
    -------
    list of dict
        One row per stage (:data:`STAGE_COLUMNS`), also written to
        ``model_stages.csv`` / ``model_stages.md``.
    """
    st = _Stages(run, grid, nodes, run_round)
    cfg = st.cfg
    t0 = time.perf_counter()
    st.report("float32", st.model(), started=t0)

    for level in cfg.prune_levels:
        t0 = time.perf_counter()
        model = st.model()
        up = down = 0
        if cfg.prune_method == "taylor":
            scores, up, down = st.taylor_scores()
            masks = mz.prune_by_scores(model, scores, level)
        else:
            masks = _PRUNERS[cfg.prune_method](model, level)
        st.masks = {**(st.masks or {}), **masks}
        run.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        label = f"pruned {level:.0%} ({cfg.prune_method})"
        st.report(label, model, traffic=(0, up, down), started=t0)
        if cfg.finetune_rounds:
            t0 = time.perf_counter()
            traffic = st.fl_rounds(cfg.finetune_rounds, f"finetune-{level:g}")
            st.report(f"{label} + FT", st.model(), traffic=traffic, started=t0)

    base = st.model()  # the float model every post-training quantization starts from
    for kind in cfg.quant_stages:
        t0 = time.perf_counter()
        if kind == "static-int8":
            ranges, up, down = st.calibration_ranges(base)
            int8 = mz.quantize_static_int8(base, ranges, input_shape=get_dataset(cfg.dataset).input_shape)
            st.report("int8 static (federated calibration)", int8,
                      reference=base, traffic=(0, up, down), started=t0)
        elif kind == "dynamic-int8":
            st.report("int8 dynamic (Linear)", mz.quantize_dynamic_int8(base), reference=base, started=t0)
        elif kind in ("bf16", "fp16"):
            dtype = torch.bfloat16 if kind == "bf16" else torch.float16
            st.report(kind, mz.cast_model(base, dtype), reference=base, started=t0)

    if cfg.qat_rounds:
        t0 = time.perf_counter()
        rounds, up, down = st.fl_rounds(cfg.qat_rounds, "qat", qat=True)
        qat_float = st.model()
        if "qat-int8" in cfg.quant_stages:
            ranges, q_up, q_down = st.calibration_ranges(qat_float)
            int8 = mz.quantize_static_int8(qat_float, ranges, input_shape=get_dataset(cfg.dataset).input_shape)
            st.report("int8 QAT (federated)", int8, reference=qat_float,
                      traffic=(rounds, up + q_up, down + q_down), started=t0)
        else:
            st.report("QAT-trained float", qat_float, traffic=(rounds, up, down), started=t0)
    return st.rows
