"""FedSqueeze compression: model updates to the fewest honest bytes and back.

Flower-free.  Public API::

    spec = parse_spec("prune=topk,keep=0.01,quant=ternary,ef=true")
    payload = encode(update, spec, round=1, seed=0)
    tensors = decode(payload, expected=shapes)
    payload, report = encode_with_report(update, spec)
    payload, residual, report = encode_with_feedback(update, residual, spec)
    peek_spec(payload)

Extending (``docs/extending.md``)::

    @register_stage
    class MyQuant(QuantStage):
        name = "mine"
        options = {"levels": Key(int, 4, lo=2, hi=256, doc="levels")}
        def encode(self, x, ctx): ...      # float32 values -> bytes
        def decode(self, r, ctx): ...      # wire.Reader -> float32 values

Modules (one stage each): :mod:`.spec` (pipeline as data, presets),
:mod:`.registry` (stages and keys), :mod:`.builtin` (the built-in stages),
:mod:`.schedule`, :mod:`.prune`, :mod:`.quantize`, :mod:`.cast`,
:mod:`.cluster`, :mod:`.values`, :mod:`.bitpack`, :mod:`.positions`,
:mod:`.entropy`, :mod:`.wire`, :mod:`.feedback`, :mod:`.codec`; the
compressor families :mod:`.rotation` (DRIVE, EDEN), :mod:`.lowrank`
(PowerSGD) and :mod:`.sketch` (count sketch, FetchSGD), registered as
stages through the public API.
"""

from . import builtin as _builtin  # noqa: F401 - registers the built-in stages
# the compressor families, registered through the same public API as any plugin
from . import lowrank, rotation, sketch  # noqa: F401
from .codec import (DecodedPayload, EncodeReport, Reference, decode, decode_full, encode, encode_with_feedback,
                    encode_with_report, peek_spec, read_blocks, server_aggregator, support,
                    union_support)
from .errors import PayloadError, RegistrationError, SpecError, UpdateError
from .prune import Selection, register_importance
from .quantize import Groups
from .registry import (DENSE, SPARSE, Key, PruneContext, PruneStage, QuantStage, Stage, ValueContext, get_stage,
                       pipeline_stages, register_stage, unregister_stage)
from .spec import KEYS, PRESET_SPECS, STAGES, PipelineSpec, parse_spec
from .wire import FORMAT_VERSION, MAGIC, Reader, Writer

__all__ = [
    "PipelineSpec",
    "parse_spec",
    "PRESET_SPECS",
    "STAGES",
    "KEYS",
    "encode",
    "encode_with_report",
    "encode_with_feedback",
    "server_aggregator",
    "read_blocks",
    "support",
    "union_support",
    "Reference",
    "decode",
    "decode_full",
    "peek_spec",
    "EncodeReport",
    "DecodedPayload",
    "PayloadError",
    "SpecError",
    "UpdateError",
    "RegistrationError",
    "register_importance",
    "register_stage",
    "unregister_stage",
    "get_stage",
    "pipeline_stages",
    "Stage",
    "PruneStage",
    "QuantStage",
    "Key",
    "ValueContext",
    "PruneContext",
    "Selection",
    "Groups",
    "Reader",
    "Writer",
    "DENSE",
    "SPARSE",
    "MAGIC",
    "FORMAT_VERSION",
]
