"""FedSqueeze compression: model updates to the fewest honest bytes and back.

Flower-free.  Public API::

    spec = parse_spec("prune=topk,keep=0.01,quant=ternary,ef=true")
    payload = encode(update, spec, round=1, seed=0)
    tensors = decode(payload, expected=shapes)
    payload, report = encode_with_report(update, spec)
    payload, residual, report = encode_with_feedback(update, residual, spec)
    payload, residual, state, report = encode_with_state(update, residual, state, spec)
    peek_spec(payload)

Modules (one stage each): :mod:`.spec` (pipeline as data, registry,
presets), :mod:`.schedule`, :mod:`.prune`, :mod:`.quantize`, :mod:`.cast`,
:mod:`.cluster`, :mod:`.values`, :mod:`.bitpack`, :mod:`.positions`,
:mod:`.entropy`, :mod:`.wire`, :mod:`.feedback`, :mod:`.codec`; the
compressor families :mod:`.rotation` (DRIVE, EDEN), :mod:`.lowrank`
(PowerSGD) and :mod:`.sketch` (count sketch, FetchSGD).
"""

from .codec import (DecodedPayload, EncodeReport, decode, decode_full, encode, encode_with_feedback,
                    encode_with_report, encode_with_state, peek_spec, read_blocks, server_aggregator)
from .errors import PayloadError, SpecError, UpdateError
from .prune import register_importance
from .spec import KEYS, PRESET_SPECS, STAGES, PipelineSpec, parse_spec
from .wire import FORMAT_VERSION, MAGIC

__all__ = [
    "PipelineSpec",
    "parse_spec",
    "PRESET_SPECS",
    "STAGES",
    "KEYS",
    "encode",
    "encode_with_report",
    "encode_with_feedback",
    "encode_with_state",
    "server_aggregator",
    "read_blocks",
    "decode",
    "decode_full",
    "peek_spec",
    "EncodeReport",
    "DecodedPayload",
    "PayloadError",
    "SpecError",
    "UpdateError",
    "register_importance",
    "MAGIC",
    "FORMAT_VERSION",
]
