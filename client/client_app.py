"""ClientApp: thin glue between Flower Messages and :mod:`client.local_round`."""

from __future__ import annotations

import logging

# torchao registers an Enum as a pytree constant at import; torch logs a deprecation
# warning about it in every process. Not actionable here, so silenced before the import.
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.local_round import ClientState, run_local_round
from client.state_store import load_state, save_state
from client.stage_query import answer_calibrate, answer_scores
from fedsqueeze.plugins import load_plugins
from fedsqueeze.protocol.instructions import NUM_PARTITIONS, PARTITION_ID, StageQuery, TrainInstruction
from fedsqueeze.protocol.messages import (CONFIG, METRICS, MODEL, PAYLOAD, UPDATE, pack_reply, packed_record,
                                         payloads_record, record_payloads, train_parts)

app = ClientApp()

# Keys of this node's persistent state (Context.state survives across rounds).
_EF, _BCAST, _BCAST_META, _CODEC = "ef-residual", "broadcast", "broadcast-meta", "codec-state"


def _load_state(context: Context) -> ClientState:
    st = context.state
    residual = st[_EF].to_torch_state_dict() if _EF in st else None
    broadcast = st[_BCAST].to_torch_state_dict() if _BCAST in st else None
    version = int(st[_BCAST_META]["version"]) if _BCAST_META in st else -1
    codec_state = {k: v.numpy() for k, v in st[_CODEC].to_torch_state_dict().items()} if _CODEC in st else None
    return ClientState(residual, broadcast, version, codec_state)


def _save_state(context: Context, state: ClientState) -> None:
    if state.residual is not None:
        context.state[_EF] = ArrayRecord(torch_state_dict=state.residual)
    if state.broadcast is not None:
        context.state[_BCAST] = ArrayRecord(torch_state_dict=state.broadcast)
        context.state[_BCAST_META] = ConfigRecord({"version": state.version})
    if state.codec_state:
        context.state[_CODEC] = ArrayRecord(torch_state_dict={k: torch.from_numpy(v)
                                                              for k, v in state.codec_state.items()})


def _load_plugins(msg: Message, context: Context) -> None:
    """Import the run's plugins before anything is parsed: from the run config and the server's announcement.

    The run config has them under ``flwr run`` (simulation and deployment); the
    announcement also covers presets and engines that pass no run config.
    """
    names = [str(context.run_config.get("plugins", ""))]
    if CONFIG in msg.content.config_records and "plugins" in msg.content.config_records[CONFIG]:
        names.append(str(msg.content.config_records[CONFIG]["plugins"]))
    load_plugins(",".join(names))


def _restore(directory: str, pid: int, round_: int) -> ClientState | None:
    """The state this client saved before ``round_`` (exact resume), if any."""
    saved = load_state(directory, pid, before_round=round_)
    if saved is None:
        return None
    groups, meta = saved
    tensors = {g: {k: torch.from_numpy(v) for k, v in t.items()} for g, t in groups.items()}
    return ClientState(tensors.get("residual"), tensors.get("broadcast"), meta.get("version", -1),
                       groups.get("codec") or None)


def _persist(directory: str, pid: int, round_: int, state: ClientState) -> None:
    groups = {"residual": state.residual, "broadcast": state.broadcast}
    arrays = {g: None if t is None else {k: v.numpy() for k, v in t.items()} for g, t in groups.items()}
    arrays["codec"] = state.codec_state or None  # numpy already ("<tensor>/<key>" names)
    save_state(directory, pid, round_, arrays, {"version": state.version})


def _partition(context: Context) -> tuple[int, int]:
    return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train locally and reply with the compressed model update."""
    _load_plugins(msg, context)
    config, payloads, mask = train_parts(msg.content)
    ins = TrainInstruction.from_record(config)
    pid, n = _partition(context)
    state = _load_state(context)
    if ins.state_dir and not any(k in context.state for k in (_EF, _BCAST)):
        # a fresh process (the run was resumed): continue from what this client saved
        state = _restore(ins.state_dir, pid, ins.round) or state
    out = run_local_round(ins, payloads, state, pid, n, mask_payload=mask)
    _save_state(context, out.state)
    if ins.state_dir:
        _persist(ins.state_dir, pid, ins.round, out.state)
    if ins.reply_format == "packed":
        content = RecordDict({UPDATE: packed_record(pack_reply(out.payload, out.metrics))})
    else:
        content = RecordDict({UPDATE: payloads_record([out.payload], [PAYLOAD]), METRICS: MetricRecord(out.metrics)})
    return Message(content=content, reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Handshake (which partition this node holds), or a model-compression stage query."""
    _load_plugins(msg, context)
    pid, n = _partition(context)
    config = msg.content[CONFIG] if CONFIG in msg.content else {}
    if "op" not in config:
        return Message(content=RecordDict({METRICS: MetricRecord({PARTITION_ID: pid, NUM_PARTITIONS: n})}),
                       reply_to=msg)
    q = StageQuery.from_record(config)
    (model_payload,) = record_payloads(msg.content[MODEL])
    if q.op == "calibrate":
        content = RecordDict({METRICS: MetricRecord(answer_calibrate(q, model_payload, pid, n))})
    else:
        content = RecordDict({UPDATE: payloads_record([answer_scores(q, model_payload, pid, n)], [PAYLOAD])})
    return Message(content=content, reply_to=msg)
