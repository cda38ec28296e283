"""The federated round loop: sample → broadcast → receive → screen → aggregate → evaluate → ledger.

Flower's ``Strategy.start`` runs a similar loop, but this one needs per-client
downlink messages (delta chains), exact byte accounting of each message it
sends and receives, deterministic sampling by partition id, screening of
compressed payloads and a ledger row per round, so it drives the ``Grid``
directly.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

import compression
from fedsqueeze import netsim
from fedsqueeze.config import RunConfig, resolve_pipeline
from fedsqueeze.datasets import dataset_provenance, get_dataset, load_dataset, test_tensors
from fedsqueeze.device import resolve_device
from fedsqueeze.log import event, get_logger
from fedsqueeze.modelzip.masks import mask_state
from fedsqueeze.partition import describe, label_counts, partition
from fedsqueeze.ledger import ClientRow, Ledger, RoundRow, accuracy, run_summary, write_summary
from fedsqueeze.models import build_model, initial_state, num_parameters
from fedsqueeze.optimizers import ServerOptimizer, server_optimizer_from_config
from fedsqueeze.protocol.instructions import NUM_PARTITIONS, PARTITION_ID, TrainInstruction
from fedsqueeze.protocol.messages import CONFIG, METRICS, payloads_record, train_content
from fedsqueeze.protocol.reference import uplink_reference
from fedsqueeze.train import evaluate
from server.accounting import each_message_bytes, message_bytes, messages_bytes
from server.exchange import exchange
from server.aggregate import weighted_mean
from server.model_stages import run_model_stages
from server.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from server.downlink import CATCHUP, Broadcast, Broadcaster
from server.replies import Accepted, Rejected, payload_bound, reply_payload_bytes, screen_reply
from server.rounds import RoundMode, RoundRunner, sample_partitions, sample_size

__all__ = ["run_federation", "plan_injections"]

_HANG_GRACE_S = 5.0  # a hanging client sleeps this long past the round timeout

log = get_logger(__name__).info


def plan_injections(sampled: list[int], cfg: RunConfig, round_: int) -> dict[int, str]:
    """Which sampled partitions are told to crash / corrupt / hang this round (seeded)."""
    rng = np.random.default_rng([cfg.seed, round_, 0xFA11])
    draws = rng.random(len(sampled))
    plan = {}
    for pid, u in zip(sampled, draws):
        if u < cfg.fail_crash:
            plan[pid] = "crash"
        elif u < cfg.fail_crash + cfg.fail_corrupt:
            plan[pid] = "corrupt"
        elif u < cfg.fail_crash + cfg.fail_corrupt + cfg.fail_hang:
            plan[pid] = "hang"
    return plan


def log_partitions(cfg: RunConfig, num_partitions: int, out_dir: Path) -> list[int]:
    """Log the partition summary, write per-client sizes and label counts to ``partitions.csv``.

    Returns the number of training examples of each partition (the server knows them from the
    seed, so the ledger and the network simulation do not depend on what clients report).
    """
    labels = np.asarray(load_dataset(cfg.dataset, cfg.data_dir or None).train_labels)
    num_classes = get_dataset(cfg.dataset).num_classes
    parts = partition(labels, num_partitions, cfg.partition, seed=cfg.seed, alpha=cfg.dirichlet_alpha,
                      shards_per_client=cfg.shards_per_client)
    log(describe(labels, parts, limit=5, num_classes=num_classes))
    counts = label_counts(labels, parts, num_classes)
    with open(out_dir / "partitions.csv", "w") as fh:
        fh.write("partition_id,num_examples," + ",".join(f"label_{d}" for d in range(num_classes)) + "\n")
        for pid, row in enumerate(counts):
            fh.write(f"{pid},{int(row.sum())}," + ",".join(str(int(c)) for c in row) + "\n")
    return [int(row.sum()) for row in counts]


def handshake(grid: Grid, cfg: RunConfig) -> tuple[dict[int, int], int, int, int]:
    """Ask every node for its partition id.

    Returns (partition → node, number of partitions, downlink bytes, uplink bytes).
    """
    deadline = time.monotonic() + 300
    while True:
        node_ids = sorted(grid.get_node_ids())
        if len(node_ids) >= cfg.min_available_nodes or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    if len(node_ids) < cfg.min_available_nodes:
        raise RuntimeError(f"only {len(node_ids)} nodes connected, min-available-nodes={cfg.min_available_nodes}")
    msgs = [Message(RecordDict({CONFIG: ConfigRecord({"round": 0})}), nid, "query", group_id="0") for nid in node_ids]
    down = messages_bytes(msgs)
    replies = exchange(grid, msgs, timeout=cfg.round_timeout or None)
    up = messages_bytes(replies)
    mapping: dict[int, int] = {}
    num_partitions = 0
    for r in replies:
        if r.has_error():
            log(f"handshake: node {r.metadata.src_node_id} failed: {r.error.reason[:120]}")
            continue
        pid = int(r.content[METRICS][PARTITION_ID])
        if pid in mapping:
            raise RuntimeError(f"two nodes claim partition {pid}")
        mapping[pid] = r.metadata.src_node_id
        num_partitions = max(num_partitions, int(r.content[METRICS][NUM_PARTITIONS]))
    return mapping, num_partitions, down, up


@dataclass
class _Run:
    cfg: RunConfig
    out_dir: Path
    model: torch.nn.Module
    weights: dict[str, torch.Tensor]
    shapes: dict[str, tuple[int, ...]]
    num_params: int
    up_spec: compression.PipelineSpec
    broadcaster: Broadcaster
    optimizer: ServerOptimizer
    ledger: Ledger | None
    started: float
    payload_bound: int = 0
    partition_sizes: list[int] | None = None
    profiles: list[netsim.ClientProfile] | None = None  # per partition; None = no network simulation
    reference_flops: float = 0.0
    flops_per_example: int = 0
    handshake_bytes: tuple[int, int] = (0, 0)  # (uplink, downlink) of this process's round-0 query
    resume_handshake_bytes: int = 0
    resumed_at: int | None = None
    stage_rows: list[dict[str, Any]] | None = None
    aggregator: Any = None  # the uplink stage's compressed-domain aggregator (FetchSGD), else None
    client_state_tag: str = ""
    restored: Checkpoint | None = None  # until the handshake maps its partitions to this run's nodes
    device: torch.device = torch.device("cpu")  # evaluation and model stages; the weights stay on the CPU

    def evaluate(self) -> tuple[float, float]:
        x, y = test_tensors(self.cfg.dataset, self.cfg.data_dir or None)
        self.model.load_state_dict(self.weights)
        return evaluate(self.model, x, y, self.cfg.eval_batch_size, device=self.device)

    def summary(self, status: str) -> dict[str, Any]:
        network = None if self.profiles is None else {
            "reference_flops": self.reference_flops, "train_flops_per_example": self.flops_per_example}
        return run_summary(
            status, self.cfg, self.ledger.rows if self.ledger else [],
            data=dataset_provenance(self.cfg.dataset, self.cfg.data_dir or None),
            pipeline_up=str(self.up_spec), pipeline_down=str(self.broadcaster.spec), num_params=self.num_params,
            handshake_bytes=self.handshake_bytes, network=network, resumed_at=self.resumed_at,
            resume_handshake_bytes=self.resume_handshake_bytes, model_stages=self.stage_rows)


def _setup(cfg: RunConfig, out_dir: Path) -> _Run:
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)  # a CUDA request without CUDA fails here, before any round
    model = build_model(cfg.model, cfg.dataset)
    weights = initial_state(cfg.model, cfg.seed, cfg.dataset)
    down_spec = resolve_pipeline(cfg.downlink)
    shapes = {k: tuple(v.shape) for k, v in weights.items()}
    up_spec = resolve_pipeline(cfg.uplink)
    aggregator = compression.server_aggregator(up_spec, shapes)
    if aggregator is not None and cfg.server_optimizer != "fedavg":
        # the stage keeps its own momentum (in its compressed domain); a second one would compound it
        raise ValueError(f"uplink {up_spec} aggregates on the server with its own momentum; "
                         f"it needs server-optimizer='fedavg', not {cfg.server_optimizer!r}")
    return _Run(
        cfg=cfg,
        out_dir=out_dir,
        model=model,
        weights=weights,
        shapes=shapes,
        num_params=num_parameters(model),
        up_spec=up_spec,
        broadcaster=Broadcaster(cfg.downlink_mode, down_spec, cfg.seed, {k: v.clone() for k, v in weights.items()},
                                catchup=resolve_pipeline(cfg.downlink_catchup) if cfg.downlink_catchup else None,
                                cost_coder="" if cfg.downlink_cost == "sent" else cfg.downlink_cost),
        optimizer=server_optimizer_from_config(cfg),
        ledger=None,
        started=time.perf_counter(),
        payload_bound=payload_bound(up_spec, shapes, cfg.seed),
        aggregator=aggregator,
        device=device,
    )


def _setup_network(run: _Run, num_partitions: int) -> None:
    """Draw (or read) every partition's link and device profile, if the run simulates a network."""
    cfg = run.cfg
    run.profiles = netsim.resolve_profiles(cfg.network, num_partitions, cfg.seed, cfg.network_scale)
    if run.profiles is None:
        return
    run.reference_flops = netsim.reference_flops(cfg.network)
    run.flops_per_example = netsim.train_flops_per_example(build_model(cfg.model, cfg.dataset),
                                                           get_dataset(cfg.dataset).input_shape)
    log(f"network: {cfg.network} x{cfg.network_scale:g} bandwidth, {cfg.compute_time} compute time "
        f"({run.flops_per_example / 1e6:.1f} MFLOP per training example), deadline "
        f"{cfg.round_deadline:g}s, over-select {cfg.over_select:g}")


def _instruction(run: _Run, round_: int, bc: Broadcast, inject: str, mode: RoundMode) -> TrainInstruction:
    c = run.cfg
    # lr-decay shapes the training rounds; the model-compression stages set their own rate
    lr = mode.lr or (c.lr * c.lr_decay ** (round_ - 1) if mode.phase == "train" else c.lr)
    return TrainInstruction(
        round=round_, seed=c.seed, model=c.model, partition=c.partition, dirichlet_alpha=c.dirichlet_alpha,
        shards_per_client=c.shards_per_client, local_epochs=c.local_epochs, batch_size=c.batch_size,
        lr=lr, bf16_autocast=c.bf16_autocast, qat=mode.qat,
        momentum=c.momentum, weight_decay=c.weight_decay, client_threads=c.client_threads, data_dir=c.data_dir,
        uplink=str(run.up_spec), downlink_mode=c.downlink_mode, base_version=bc.base_version,
        target_version=bc.target_version, catchup=bc.kind == CATCHUP, state_dir=_client_state_dir(run),
        inject=inject, hang_s=c.round_timeout + _HANG_GRACE_S if inject == "hang" else 0.0,
        dataset=c.dataset, device=c.device, reply_format=c.reply_format,
    )


_TRAIN = RoundMode()  # frozen: one shared default


def _train_round(run: _Run, grid: Grid, round_: int, nodes: dict[int, int], mode: RoundMode = _TRAIN,
                 evaluate_model: bool = True) -> RoundRow:
    cfg = run.cfg
    t0 = time.perf_counter()
    sampled, target_k, unavailable = _sample(run, nodes, round_)
    injections = plan_injections(sampled, cfg, round_)
    run.broadcaster.advance(run.weights, round_)
    messages, pid_of = [], {}
    clients: dict[int, ClientRow] = {}
    records: dict[tuple[int, ...], Any] = {}  # one record per distinct payload list: hashed once, not per node
    references: dict[tuple[int, ...], Any] = {}  # coder=context: what each distinct payload list tells a client
    reference_of: dict[int, Any] = {}
    supports: dict[int, dict] = {}  # chains of different lengths share payloads: each is decoded once a round
    packed_instruction_format = cfg.instruction_format == "packed"

    def support_of(p: bytes) -> dict:
        if id(p) not in supports:
            supports[id(p)] = compression.support(compression.decode(p, expected=run.shapes))
        return supports[id(p)]
    for pid in sampled:
        nid = nodes[pid]
        bc = run.broadcaster.for_node(nid)
        ins = _instruction(run, round_, bc, injections.get(pid, ""), mode)
        key = tuple(id(p) for p in bc.payloads)
        if key not in records:
            records[key] = None if packed_instruction_format else payloads_record(bc.payloads)
            if run.up_spec.coder == "context":
                references[key] = uplink_reference(bc.base_version, map(support_of, bc.payloads))
        reference_of[nid] = references.get(key)
        config = ins.to_record()
        if cfg.plugins:  # announced only when set: runs without plugins keep their exact message bytes
            config["plugins"] = cfg.plugins
        content = train_content(config, bc.payloads, mode.mask_payload or None, packed=packed_instruction_format,
                                model_record=records[key])
        messages.append(Message(content, nid, "train", group_id=str(round_)))
        pid_of[nid] = pid
        clients[nid] = ClientRow(
            partition_id=pid, node_id=nid, status="timeout", local_epochs=cfg.local_epochs,
            num_examples=run.partition_sizes[pid] if run.partition_sizes else 0,
            downlink_payload_bytes=sum(map(len, bc.payloads)) + len(mode.mask_payload),
            base_version=bc.base_version, target_version=bc.target_version, downlink_kind=bc.kind)
    row = RoundRow(round=round_, test_accuracy=None, test_loss=None, clients_sampled=len(sampled), phase=mode.phase,
                   clients_unavailable=unavailable)
    for msg, size in zip(messages, each_message_bytes(messages)):
        clients[msg.metadata.dst_node_id].downlink_bytes = size
    row.downlink_bytes = sum(c.downlink_bytes for c in clients.values())
    row.downlink_payload_bytes = sum(c.downlink_payload_bytes for c in clients.values())
    row.downlink_dense_bytes = 4 * run.num_params * len(messages)

    t_sent = time.perf_counter()
    replies = exchange(grid, messages, timeout=cfg.round_timeout or None)
    row.train_phase_s = time.perf_counter() - t_sent
    replies.sort(key=lambda r: pid_of.get(r.metadata.src_node_id, -1))  # arrival order must not matter
    accepted: list[Accepted] = []
    answered = set()
    max_examples = len(load_dataset(cfg.dataset, cfg.data_dir or None).train_labels)  # no client holds more
    max_payload = run.payload_bound
    packed = cfg.reply_format == "packed"
    for reply in replies:
        nid = reply.metadata.src_node_id
        if nid not in pid_of or nid in answered:
            continue
        answered.add(nid)
        client = clients[nid]
        client.uplink_bytes = message_bytes(reply)
        client.uplink_payload_bytes = reply_payload_bytes(reply, packed)
        row.uplink_bytes += client.uplink_bytes
        row.uplink_payload_bytes += client.uplink_payload_bytes
        row.uplink_dense_bytes += 4 * run.num_params
        result = screen_reply(reply, run.up_spec, run.shapes, max_payload_bytes=max_payload,
                              max_examples=max_examples, max_update_norm=cfg.max_update_norm,
                              reference=reference_of[nid], packed=packed)
        run.broadcaster.confirm(nid, isinstance(result, Accepted))
        if isinstance(result, Rejected):
            log(f"round {round_}: rejected node {nid} (partition {pid_of[nid]}): {result.tag}: {result.reason}")
            row.failures.append(f"{result.tag}:{pid_of[nid]}")
            client.status = result.tag
            continue
        client.status, client.train_s = "ok", result.train_s
        accepted.append(result)
        row.client_train_s.append(result.train_s)
        row.client_encode_s.append(result.encode_s)
        row.bits_per_param.append(8 * result.payload_bytes / run.num_params)
        if result.rel_distortion is not None:
            row.rel_distortion.append(result.rel_distortion)
    for nid, pid in pid_of.items():
        if nid not in answered:
            run.broadcaster.confirm(nid, False)
            row.failures.append(f"timeout:{pid}")
            log(f"round {round_}: no reply from node {nid} (partition {pid}) within {cfg.round_timeout:g}s")
    if run.profiles is not None:
        accepted = _close_simulated_round(run, row, clients, accepted, target_k, pid_of)
    row.clients_ok = len(accepted)
    row.clients = sorted(clients.values(), key=lambda c: c.partition_id)

    if len(accepted) >= cfg.min_train_results:
        if run.aggregator is not None:
            delta = run.aggregator.aggregate([a.payload for a in accepted], [a.num_examples for a in accepted])
            delta = mask_state(delta, mode.masks) if mode.masks else delta
        else:
            updates = [mask_state(a.update, mode.masks) if mode.masks else a.update for a in accepted]
            delta = weighted_mean(updates, [a.num_examples for a in accepted])
        run.weights = run.optimizer.step(run.weights, delta)
        if mode.masks:  # a server optimizer with momentum would otherwise revive pruned weights
            run.weights = mask_state(run.weights, mode.masks)
        row.applied = True
    else:
        log(f"round {round_}: {len(accepted)} valid replies < min-train-results={cfg.min_train_results}; "
            "keeping the previous global model")
    if evaluate_model:
        t_eval = time.perf_counter()
        row.test_loss, row.test_accuracy = run.evaluate()
        row.eval_s = time.perf_counter() - t_eval
    row.round_s = time.perf_counter() - t0
    return row


def _sample(run: _Run, nodes: dict[int, int], round_: int) -> tuple[list[int], int, int]:
    """(sampled partitions, replies to keep (0 = all), unavailable count) for ``round_``.

    Without a network simulation every node is a candidate. With one, only the
    partitions available this round (per their profiles) are; K is still
    ``fraction-train`` of all nodes, and over-selection samples ``ceil(K * (1 + over-select))``
    of the available ones and keeps the first K replies to arrive.
    """
    cfg = run.cfg
    if run.profiles is None:
        return sample_partitions(list(nodes), cfg, round_), 0, 0
    candidates = netsim.available_partitions(run.profiles, cfg.seed, round_, nodes)
    k = sample_size(len(nodes), cfg)
    extra = cfg.over_select > 0
    n = math.ceil(k * (1 + cfg.over_select)) if extra else k
    return sample_partitions(candidates, cfg, round_, n), k if extra else 0, len(nodes) - len(candidates)


def _close_simulated_round(run: _Run, row: RoundRow, clients: dict[int, ClientRow], accepted: list[Accepted],
                           target_k: int, pid_of: dict[int, int]) -> list[Accepted]:
    """Time every reply on its client's simulated link and device; keep what the server waits for.

    Mutates ``clients`` (simulated times, ``straggler`` / ``overselected`` status) and ``row``
    (``sim_round_s``, counts); returns the accepted replies still aggregated. A straggler
    already received and applied its broadcast, so its downlink version stands; the update it
    sent is lost, and the part of it that its error-feedback residual did not keep is lost
    with it (docs/network.md).
    """
    cfg = run.cfg
    assert run.profiles is not None
    timings = {}
    for nid, c in clients.items():
        if c.status == "timeout":  # no reply at all: nothing arrives to be timed
            continue
        prof = run.profiles[c.partition_id]
        if cfg.compute_time == "flops":
            compute = netsim.compute_seconds(c.num_examples, c.local_epochs, run.flops_per_example, prof,
                                             run.reference_flops)
        else:
            compute = c.train_s / prof.compute_factor
        t = netsim.client_timing(c.partition_id, prof, c.downlink_bytes, c.uplink_bytes, compute)
        c.download_s, c.compute_s, c.upload_s, c.arrival_s = t.download_s, t.compute_s, t.upload_s, t.arrival_s
        if c.status == "ok":
            timings[nid] = t
    closed = netsim.close_round(list(timings.values()), target_k, cfg.round_deadline)
    late, over = set(closed.stragglers), set(closed.overselected)
    for c in clients.values():
        if c.partition_id in late:
            c.status = netsim.STATUS_STRAGGLER
        elif c.partition_id in over:
            c.status = netsim.STATUS_OVERSELECTED
    row.sim_round_s, row.stragglers, row.overselected = closed.round_s, len(late), len(over)
    kept = set(closed.kept)
    return [a for a in accepted if pid_of[a.node_id] in kept]


def _record(run: _Run, row: RoundRow) -> None:
    """Append ``row`` to the ledger, refresh ``summary.json`` and log the round."""
    assert run.ledger is not None
    written = run.ledger.append(row, time.perf_counter() - run.started)
    write_summary(run.out_dir, run.summary("running"))
    phase = "" if row.phase == "train" else f" [{row.phase}]"
    acc = ("acc=- (not evaluated)" if row.test_accuracy is None
           else f"acc={row.test_accuracy:.4f} loss={row.test_loss:.4f}")
    sim = "" if row.sim_round_s is None else (
        f" sim {row.sim_round_s:.1f}s (total {written['cum_sim_s']:.0f}s, stragglers {row.stragglers}"
        f"{f', over-selected {row.overselected}' if row.overselected else ''})")
    log(f"round {row.round}{phase}: {acc} ok={row.clients_ok}/"
        f"{row.clients_sampled} up={row.uplink_bytes:,}B (x{written['uplink_ratio']}) "
        f"down={row.downlink_bytes:,}B (x{written['downlink_ratio']}) {row.round_s:.1f}s "
        f"(clients {row.train_phase_s:.1f}s, eval {row.eval_s:.1f}s){sim}",
        extra=event("round", round=row.round, phase=row.phase))


def _round_runner(run: _Run, grid: Grid, nodes: dict[int, int]) -> RoundRunner:
    """The :class:`~server.rounds.RoundRunner` of this run: rounds trained, evaluated and recorded like any other."""
    def run_round(round_: int, mode: RoundMode) -> RoundRow:
        row = _train_round(run, grid, round_, nodes, mode)
        _record(run, row)
        return row
    return run_round


def _checkpoint(run: _Run, round_: int, nodes: dict[int, int]) -> None:
    assert run.ledger is not None
    bc = run.broadcaster
    pid_of = {nid: pid for pid, nid in nodes.items()}  # node ids change from run to run, partitions do not
    save_checkpoint(run.out_dir, Checkpoint(
        round=round_, ledger_rows=len(run.ledger.rows), config=run.cfg.to_mapping(), weights=run.weights,
        broadcast=bc.broadcast, optimizer_state=run.optimizer.state, history=bc.history,
        history_costs=bc.history_costs if bc.cost_coder else [],
        node_versions={pid_of[n]: v for n, v in bc.node_version.items() if n in pid_of},
        node_errors={pid_of[n]: e for n, e in bc.node_error.items() if n in pid_of},
        client_state_tag=run.client_state_tag,
        aggregator_state=run.aggregator.state if run.aggregator else None))


def _restore_nodes(run: _Run, nodes: dict[int, int]) -> None:
    """Give this run's nodes the downlink state their partitions had at the checkpoint.

    Only when the clients saved their own state (``client-state-dir``): a client
    that lost it holds no model, whatever version the checkpoint says.
    """
    ckpt, run.restored = run.restored, None
    if ckpt is None or not run.client_state_tag:
        return
    bc = run.broadcaster
    bc.node_version = {nodes[pid]: v for pid, v in ckpt.node_versions.items() if pid in nodes}
    bc.node_error = {nodes[pid]: e for pid, e in ckpt.node_errors.items() if pid in nodes}


def _client_state_dir(run: _Run) -> str:
    """Absolute folder of this run's saved client states ('' = clients keep state in memory only)."""
    if not run.cfg.client_state_dir:
        return ""
    return str(Path(run.cfg.client_state_dir).resolve() / run.client_state_tag)


def _resume(run: _Run) -> int:
    """Restore the last checkpoint if asked to; return the first round still to run (0 = fresh)."""
    ckpt = load_checkpoint(run.out_dir, run.cfg.to_mapping()) if run.cfg.resume else None
    pipelines = (str(run.up_spec), str(run.broadcaster.spec))
    if ckpt is None:
        # random, not seeded: a fresh run in the same folder must never read an older run's client states
        run.client_state_tag = uuid.uuid4().hex if run.cfg.client_state_dir else ""
        if run.cfg.resume:
            log(f"resume: no checkpoint in {run.out_dir}; starting from round 0")
        run.ledger = Ledger(run.out_dir, *pipelines)
        return 0
    run.weights, run.optimizer.state = ckpt.weights, ckpt.optimizer_state
    if run.aggregator is not None:
        run.aggregator.load_state(ckpt.aggregator_state or {})
    run.broadcaster.broadcast, run.broadcaster.history = ckpt.broadcast, ckpt.history
    if run.broadcaster.cost_coder and len(ckpt.history_costs) != len(ckpt.history):
        raise CheckpointError(f"downlink-cost = {run.cfg.downlink_cost!r} needs the costs of the broadcast history, which "
                              "this checkpoint does not hold (written with another downlink-cost)")
    run.broadcaster.history_costs = list(ckpt.history_costs) if run.broadcaster.cost_coder else \
        [len(p) for p in ckpt.history]
    # a tag written without client-state-dir (or none at all) names no saved states
    run.client_state_tag = ckpt.client_state_tag if run.cfg.client_state_dir else ""
    run.restored = ckpt
    run.ledger = Ledger(run.out_dir, *pipelines, keep_rows=ckpt.ledger_rows)
    run.started = time.perf_counter() - float(run.ledger.rows[-1]["wall_s"])
    run.resumed_at = ckpt.round
    log(f"resume: continuing after round {ckpt.round} " + (
        "(clients restore their saved state)" if run.client_state_tag else
        "(client residuals start from zero: set client-state-dir for an exact resume)"))
    return ckpt.round + 1


def run_federation(grid: Grid, cfg: RunConfig, out_dir: Path) -> dict[str, Any]:
    """Run ``cfg.num_server_rounds`` rounds; write the ledger and ``summary.json``; return the summary.

    With ``cfg.resume`` and a checkpoint in ``out_dir``, continue after its round.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    run = _setup(cfg, out_dir)
    first = _resume(run)
    assert run.ledger is not None
    log(f"run {cfg.name!r} seed={cfg.seed} model={cfg.model} ({run.num_params:,} params) "
        f"uplink={run.up_spec} downlink={run.broadcaster.spec} ({cfg.downlink_mode}) out={out_dir}")
    nodes, num_partitions, down, up = handshake(grid, cfg)
    run.handshake_bytes = (up, down)
    _restore_nodes(run, nodes)
    log(f"handshake: {len(nodes)} nodes of {num_partitions} partitions, up {up:,} B, down {down:,} B "
        "(reported apart from the training rounds)")
    run.partition_sizes = log_partitions(cfg, num_partitions, out_dir)
    _setup_network(run, num_partitions)
    if first == 0:
        loss, acc = run.evaluate()
        run.ledger.append(RoundRow(0, acc, loss, uplink_bytes=up, downlink_bytes=down, clients_sampled=len(nodes),
                                   clients_ok=len(nodes), applied=False, handshake=True),
                          time.perf_counter() - run.started)
        log(f"round 0: acc={acc:.4f} loss={loss:.4f}", extra=event("round", round=0, phase="train"))
        _checkpoint(run, 0, nodes)
        first = 1
    else:
        run.resume_handshake_bytes = up + down  # real traffic, but not part of the uninterrupted run's ledger
    write_summary(out_dir, run.summary("running"))
    for rnd in range(first, cfg.num_server_rounds + 1):
        acc = accuracy(run.ledger.rows[-1])
        if cfg.stop_at_accuracy and acc is not None and acc >= cfg.stop_at_accuracy:
            log(f"reached stop-at-accuracy {cfg.stop_at_accuracy:g} at round {rnd - 1}; stopping")
            break
        evaluate_model = rnd % cfg.eval_every == 0 or rnd == cfg.num_server_rounds
        _record(run, _train_round(run, grid, rnd, nodes, evaluate_model=evaluate_model))
        _checkpoint(run, rnd, nodes)
    if cfg.model_stages:
        # Not checkpointed: a resumed run drops these rows (the ledger is cut back to the
        # last checkpoint, the final training round) and redoes the stages from there.
        run.stage_rows = run_model_stages(run, grid, nodes, _round_runner(run, grid, nodes))
    summary = run.summary("completed")
    write_summary(out_dir, summary)
    log(f"done: final acc={summary['final_accuracy']:.4f} best={summary['best_accuracy']:.4f}; training rounds: "
        f"uplink={summary['cum_uplink_bytes']:,}B downlink={summary['cum_downlink_bytes']:,}B, "
        f"vs float32 uplink x{summary['uplink_vs_float32'] or 0:.1f} downlink x{summary['downlink_vs_float32'] or 0:.1f} "
        f"total x{summary['total_vs_float32'] or 0:.1f}; handshake up {up:,}B down {down:,}B -> {out_dir}")
    return summary
