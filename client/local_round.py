"""One client round, Flower-free: received model → train → delta → compress.

The ClientApp (``client_app.py``) only converts Messages to these arguments
and back. Everything a client does is decided by the server's announcement
(:class:`TrainInstruction`); the client never guesses a setting.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import torch

import compression
from fedsqueeze.datasets import get_dataset, load_dataset, to_input
from fedsqueeze.device import resolve_device
from fedsqueeze.modelzip import prepare_qat
from fedsqueeze.modelzip.masks import mask_state, unpack_masks
from fedsqueeze.models import build_model, initial_state
from fedsqueeze.partition import partition
from fedsqueeze.protocol.instructions import (ENCODE_S, FULL_MODEL, NUM_EXAMPLES, REL_DISTORTION, TRAIN_LOSS, TRAIN_S,
                                              TrainInstruction)
from fedsqueeze.protocol.reference import uplink_reference
from fedsqueeze.train import state_delta, train

__all__ = ["ClientState", "RoundOutput", "Received", "run_local_round", "client_seed", "InjectedCrash", "client_data",
           "received_model"]


class InjectedCrash(RuntimeError):
    """A failure the server asked for (failure-injection experiments)."""


class StaleBroadcast(RuntimeError):
    """The client's broadcast model is not the version the delta chain starts from."""


@dataclass
class ClientState:
    """What a client keeps between rounds (lives in Flower's ``Context.state``).

    ``residual``: uplink error-feedback memory (``None`` = zeros).
    ``broadcast`` / ``version``: the last model received in delta-downlink mode.
    ``codec_state``: what stateful uplink stages keep between this client's
    rounds (PowerSGD's warm-start factors), the flat ``"<tensor>/<key>"``
    mapping of numpy arrays that :func:`compression.encode_with_feedback`
    reads and updates as its ``state``.
    """

    residual: dict[str, torch.Tensor] | None = None
    broadcast: dict[str, torch.Tensor] | None = None
    version: int = -1
    codec_state: dict[str, np.ndarray] | None = None


@dataclass(frozen=True)
class RoundOutput:
    """The reply: compressed update plus metrics, and the client's new state."""

    payload: bytes
    metrics: dict[str, float | int]
    state: ClientState


class Received(NamedTuple):
    """What a train message brought: the global model, the client's new state and the uplink's reference."""

    model: dict[str, torch.Tensor]
    state: ClientState
    #: ``coder=context`` uplinks: the support of the deltas received
    #: (:func:`fedsqueeze.protocol.reference.uplink_reference`); ``None`` for other coders.
    reference: dict[str, np.ndarray] | None


def client_seed(seed: int, round_: int, partition_id: int) -> int:
    """A 63-bit seed unique to (run seed, round, client)."""
    return int(np.random.SeedSequence([seed, round_, partition_id]).generate_state(2, np.uint64)[0] >> 1)


_PARTS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_MODELS: dict[tuple[str, str], torch.nn.Module] = {}


def client_data(ins: TrainInstruction, partition_id: int, num_partitions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This client's training tensors; the dataset is loaded once per process and memoized."""
    key = (ins.data_dir, ins.partition, num_partitions, ins.seed, ins.dirichlet_alpha, ins.shards_per_client)
    key += (partition_id, ins.dataset)
    cached = _PARTS.get(key)
    if cached is not None:
        return cached
    data = load_dataset(ins.dataset, ins.data_dir or None)
    labels = np.asarray(data.train_labels)
    parts = partition(labels, num_partitions, ins.partition, seed=ins.seed,
                      alpha=ins.dirichlet_alpha, shards_per_client=ins.shards_per_client)
    idx = parts[partition_id]
    out = (to_input(data.train_images[idx], ins.dataset), torch.from_numpy(labels[idx].astype(np.int64)))
    if len(_PARTS) > 256:  # a worker serves many clients; bound the memo
        _PARTS.clear()
    _PARTS[key] = out
    return out


def _model(name: str, dataset: str) -> torch.nn.Module:
    # One instance per architecture and dataset per process: weights are overwritten each call.
    if (name, dataset) not in _MODELS:
        _MODELS[name, dataset] = build_model(name, dataset)
    return _MODELS[name, dataset]


def received_model(ins: TrainInstruction, payloads: Sequence[bytes], state: ClientState) -> Received:
    """Reconstruct the global model the server broadcast, and what the uplink is coded against.

    ``ins.base_version == -1``: ``payloads`` is one encoded model. Otherwise
    (delta downlink) a chain of encoded deltas from ``ins.base_version`` to
    ``ins.target_version``, applied in order to the client's stored broadcast
    model (version 0 is the seeded initial model, which every client can
    rebuild), or with ``ins.catchup`` one accumulated update spanning those
    versions. In delta mode the result is kept as the new broadcast model.

    Raises
    ------
    compression.PayloadError
        A payload is malformed.
    StaleBroadcast
        Delta mode, but this client does not hold ``ins.base_version``.
    """
    template = {k: tuple(v.shape) for k, v in _model(ins.model, ins.dataset).state_dict().items()}
    context = compression.parse_spec(ins.uplink).coder == "context"
    if ins.base_version == FULL_MODEL:
        if len(payloads) != 1:
            raise compression.PayloadError(f"a full model is 1 payload, got {len(payloads)}")
        base = compression.decode(payloads[0], expected=template)
        reference = uplink_reference(FULL_MODEL, []) if context else None
        if ins.downlink_mode == "full":
            return Received(base, state, reference)
        return Received(base, replace(state, broadcast={k: v.clone() for k, v in base.items()},
                                      version=ins.target_version), reference)
    if ins.base_version == 0:
        base = initial_state(ins.model, ins.seed, ins.dataset)
    elif state.broadcast is not None and state.version == ins.base_version:
        base = {k: v.clone() for k, v in state.broadcast.items()}
    else:
        raise StaleBroadcast(f"client holds version {state.version}, chain starts at {ins.base_version}")
    if ins.catchup:
        if len(payloads) != 1 or ins.target_version <= ins.base_version:
            raise compression.PayloadError(f"a catch-up is 1 payload for a later version, got {len(payloads)} "
                                           f"for versions {ins.base_version}->{ins.target_version}")
    elif len(payloads) != ins.target_version - ins.base_version:
        raise compression.PayloadError(
            f"delta chain has {len(payloads)} payloads for versions {ins.base_version}->{ins.target_version}")
    supports = []
    for p in payloads:
        delta = compression.decode(p, expected=template)
        for k, v in delta.items():
            base[k] += v
        if context:  # the positions only: a long chain's dense deltas are not kept
            supports.append(compression.support(delta))
    return Received(base, replace(state, broadcast={k: v.clone() for k, v in base.items()}, version=ins.target_version),
                    uplink_reference(ins.base_version, supports) if context else None)


def run_local_round(
    ins: TrainInstruction,
    payloads: Sequence[bytes],
    state: ClientState,
    partition_id: int,
    num_partitions: int,
    mask_payload: bytes | None = None,
) -> RoundOutput:
    """Train on this client's partition and return the compressed update.

    With ``mask_payload`` (a pruned model's masks, ``fedsqueeze.modelzip.masks``)
    pruned weights stay exactly zero during training, and the update and the
    error-feedback residual are zero at pruned positions, so nothing the
    client sends or remembers can revive a pruned weight.

    Does not mutate ``state``; the returned :class:`RoundOutput` carries the
    new state (updated residual and broadcast model).
    """
    torch.set_num_threads(ins.client_threads)
    if ins.inject == "crash":
        raise InjectedCrash(f"injected crash (round {ins.round}, partition {partition_id})")
    device = resolve_device(ins.device)  # before any work: a client without the GPU asked for fails clearly
    global_state, state, reference = received_model(ins, payloads, state)
    x, y = client_data(ins, partition_id, num_partitions)
    masks = unpack_masks(mask_payload, {k: tuple(v.shape) for k, v in global_state.items()}) if mask_payload else None
    model = _model(ins.model, ins.dataset)
    model.load_state_dict(global_state)
    if ins.qat:  # a trainable copy; parameter names are preserved
        model = prepare_qat(model, input_shape=get_dataset(ins.dataset).input_shape)
    seed = client_seed(ins.seed, ins.round, partition_id)
    result = train(model, x, y, epochs=ins.local_epochs, batch_size=ins.batch_size, lr=ins.lr,
                   momentum=ins.momentum, weight_decay=ins.weight_decay, seed=seed, masks=masks,
                   bf16_autocast=ins.bf16_autocast, device=device)
    trained = model.state_dict()  # train() leaves the model where it found it: on the CPU
    update = state_delta({k: trained[k] for k in global_state}, global_state)
    residual_in = state.residual
    if masks:
        update = mask_state(update, masks)
        residual_in = mask_state(residual_in, masks) if residual_in is not None else None

    t0 = time.perf_counter()
    spec = compression.parse_spec(ins.uplink)
    codec_state = dict(state.codec_state or {})  # a copy: the codec updates it in place
    payload, residual, report = compression.encode_with_feedback(update, residual_in, spec, round=ins.round, seed=seed,
                                                                 state=codec_state, reference=reference)
    if masks and residual is not None:
        residual = mask_state(residual, masks)
    encode_s = time.perf_counter() - t0
    if ins.inject == "corrupt":
        payload = corrupt(payload, seed)
    if ins.inject == "hang":
        time.sleep(ins.hang_s)
    metrics = {
        NUM_EXAMPLES: result.num_examples,
        TRAIN_LOSS: result.loss,
        REL_DISTORTION: report.rel_distortion,
        TRAIN_S: result.seconds,
        ENCODE_S: encode_s,
    }
    return RoundOutput(payload, metrics, ClientState(residual, state.broadcast, state.version, codec_state or None))


def corrupt(payload: bytes, seed: int) -> bytes:
    """Flip a few bytes past the magic (failure injection: a garbled upload)."""
    rng = np.random.default_rng(seed)
    buf = bytearray(payload)
    for pos in rng.integers(4, len(buf), size=8):
        buf[pos] ^= 0xFF
    return bytes(buf)
