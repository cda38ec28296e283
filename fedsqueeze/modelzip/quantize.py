"""Post-training int8 quantization (static, dynamic), QAT and float casts, via torchao.

Backends, as checked on this CPU (torch 2.14.1, torchao 0.18, x86 AVX-512):

* static int8 and QAT: torchao's PT2E flow (``torch.export`` →
  ``prepare_pt2e`` / ``prepare_qat_pt2e`` with ``X86InductorQuantizer`` →
  ``convert_pt2e``). The result is an exported graph whose Conv/Linear
  weights are stored as int8 tensors (per-channel symmetric scales) and whose
  activations go through uint8 quantize/dequantize pairs. Run as is, it
  executes the reference (dequantize + float op) path; :func:`lower_int8_x86`
  rewrites it onto oneDNN int8 kernels for speed.
* dynamic int8: ``torchao.quantization.quantize_`` with
  ``Int8DynamicActivationInt8WeightConfig`` (Linear layers only; torchao has
  no dynamic conv config, so convolutions stay float32).
* float16 / bfloat16: a plain ``.to(dtype)`` copy behind a cast wrapper.

``torch.ao.quantization`` (deprecated in torch 2.14) is not used anywhere.

Mergeable calibration: static PTQ uses ``MinMaxObserver`` for activations
instead of the X86 default ``HistogramObserver``, because min/max ranges merge
exactly across clients (min of mins, max of maxes equals the range over the
union of their data) while histograms with different bin edges do not.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
from torchao.quantization.pt2e import allow_exported_model_train_eval
from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86
from torchao.quantization.pt2e.observer import MinMaxObserver
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e
from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
)

__all__ = [
    "Ranges",
    "default_input_shape",
    "export_module",
    "observe_ranges",
    "merge_ranges",
    "quantize_static_int8",
    "quantize_dynamic_int8",
    "prepare_qat",
    "convert_qat",
    "cast_model",
    "is_pt2e_int8",
    "lower_int8_x86",
]

#: Per activation observer: ``(min, max)`` seen during calibration.
Ranges = dict[str, tuple[float, float]]

def default_input_shape() -> tuple[int, ...]:
    """One example of the default dataset (MNIST: ``(1, 28, 28)``), for callers that give no shape.

    The federation always passes its dataset's shape; this default serves
    direct use of the toolbox on the built-in models.
    """
    from fedsqueeze.datasets import DEFAULT_DATASET, get_dataset

    return tuple(get_dataset(DEFAULT_DATASET).input_shape)

# Same eps as the X86 default config (keeps scales of tiny ranges sane).
_ACT_EPS = 2**-12
_OBSERVER_PREFIX = "activation_post_process_"
# Max-pool reads the un-quantized ReLU output by design (its output is
# observed instead); torchao warns about that on every prepare.
_MAXPOOL_WARNING = "The input of maxpool2d is not quantized"


def _prepare(graph: torch.fx.GraphModule, quantizer: X86InductorQuantizer, qat: bool) -> torch.fx.GraphModule:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_MAXPOOL_WARNING)
        prepared = (prepare_qat_pt2e if qat else prepare_pt2e)(graph, quantizer)
    allow_exported_model_train_eval(prepared)
    return prepared


def _example(batch: int = 2, dtype: torch.dtype = torch.float32,
             input_shape: Sequence[int] | None = None) -> torch.Tensor:
    # Batch 2, not 1: export specializes size-1 dims, which would pin the batch.
    shape = tuple(input_shape) if input_shape is not None else default_input_shape()
    return torch.zeros((batch, *shape), dtype=dtype)


def export_module(model: nn.Module, example: torch.Tensor | None = None,
                  input_shape: Sequence[int] | None = None) -> torch.export.ExportedProgram:
    """``torch.export`` the model with a dynamic batch dimension (model not mutated).

    The example input is ``example``, else zeros of one example of ``input_shape``
    (default :func:`default_input_shape`).
    """
    if example is None and input_shape is None and isinstance(model, torch.fx.GraphModule):
        input_shape = _graph_input_shape(model)  # a graph already exported (int8, QAT) knows its input
    example = _example(input_shape=input_shape) if example is None else example
    batch = torch.export.Dim("batch", min=1)
    return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))


def _static_quantizer(is_qat: bool) -> X86InductorQuantizer:
    config = get_default_x86_inductor_quantization_config(is_qat=is_qat)
    if not is_qat:
        act = dataclasses.replace(
            config.input_activation, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=_ACT_EPS)
        )
        config = dataclasses.replace(config, input_activation=act, output_activation=act)
    quantizer = X86InductorQuantizer()
    quantizer.set_global(config)
    return quantizer


def _prepare_static(model: nn.Module, input_shape: Sequence[int] | None) -> torch.fx.GraphModule:
    model = copy.deepcopy(model).eval()  # the exported graph may share parameter storage with its source
    return _prepare(export_module(model, input_shape=input_shape).module(), _static_quantizer(is_qat=False),
                    qat=False)


def _activation_observers(prepared: torch.fx.GraphModule) -> dict[str, MinMaxObserver]:
    """Activation observers keyed by the graph node they observe (stable across processes).

    Weight observers observe ``get_attr`` nodes and are excluded: the server
    holds the weights, only activation statistics need data.
    """
    observers = {}
    for node in prepared.graph.nodes:
        if node.op != "call_module" or not str(node.target).startswith(_OBSERVER_PREFIX):
            continue
        source = node.args[0]
        if source.op == "get_attr":
            continue
        observers[source.name] = prepared.get_submodule(node.target)
    return observers


def observe_ranges(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> Ranges:
    """Activation ``(min, max)`` of every tensor static int8 quantization needs.

    A client runs this on its local data and sends the small dict; the
    server merges the dicts with :func:`merge_ranges` and builds the int8
    model with :func:`quantize_static_int8`.

    Parameters
    ----------
    model : nn.Module
        Float model; not mutated (a copy is exported and observed).
    x : Tensor
        Calibration inputs ``(N, *input_shape)``, N >= 1.
    batch_size : int
        Forward batch size (memory only; min/max do not depend on it).

    Returns
    -------
    dict[str, tuple[float, float]]
        Keyed by the observed node's name in the exported graph.
    """
    if len(x) == 0:
        raise ValueError("observe_ranges: no calibration data")
    prepared = _prepare_static(model, tuple(x.shape[1:]))
    with torch.no_grad():
        for lo in range(0, len(x), batch_size):
            prepared(x[lo : lo + batch_size])
    return {k: (float(o.min_val), float(o.max_val)) for k, o in _activation_observers(prepared).items()}


def merge_ranges(ranges: Sequence[Mapping[str, tuple[float, float]]]) -> Ranges:
    """Server-side merge: min of the mins and max of the maxes, per key.

    Raises
    ------
    ValueError
        If the list is empty or the dicts have different keys (different
        models or quantizer versions).
    """
    if not ranges:
        raise ValueError("merge_ranges: nothing to merge")
    keys = set(ranges[0])
    if any(set(r) != keys for r in ranges):
        raise ValueError("merge_ranges: range dicts observe different tensors")
    return {k: (min(r[k][0] for r in ranges), max(r[k][1] for r in ranges)) for k in ranges[0]}


def _drop_unused_attributes(gm: torch.fx.GraphModule) -> None:
    """Delete parameters/buffers no graph node reads.

    ``convert_pt2e`` adds int8 copies of the weights but leaves the float
    originals attached; saving them would undo the size win.
    """
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in list(gm.named_parameters()) + list(gm.named_buffers()):
        if name not in used:
            owner_name, _, attr = name.rpartition(".")
            owner = gm.get_submodule(owner_name) if owner_name else gm
            delattr(owner, attr)


def _finish_convert(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    converted = convert_pt2e(prepared)
    _drop_unused_attributes(converted)
    # Exported modules refuse .eval(); this maps it onto the pt2e-safe version
    # so fedsqueeze.train.evaluate works on the int8 model.
    allow_exported_model_train_eval(converted)
    converted.eval()
    return converted


def quantize_static_int8(model: nn.Module, calibration: Mapping[str, tuple[float, float]] | torch.Tensor,
                         input_shape: Sequence[int] | None = None) -> torch.fx.GraphModule:
    """Static int8 model: int8 per-channel weights, uint8 per-tensor activations.

    Parameters
    ----------
    model : nn.Module
        Float model; not mutated.
    calibration : Ranges or Tensor
        Either activation ranges (from :func:`observe_ranges`, possibly merged
        over clients) or calibration inputs, observed here.
    input_shape : sequence of int, optional
        One input example's shape; default the calibration inputs' shape, else
        :func:`default_input_shape`.

    Returns
    -------
    torch.fx.GraphModule
        The converted PT2E graph (reference quantized ops; save it with
        :func:`fedsqueeze.modelzip.save_artifact`, speed it up with
        :func:`lower_int8_x86`).

    Raises
    ------
    KeyError
        If ``calibration`` lacks a range the graph needs.
    """
    if isinstance(calibration, torch.Tensor):
        ranges = observe_ranges(model, calibration)
        input_shape = tuple(calibration.shape[1:]) if input_shape is None else input_shape
    else:
        ranges = dict(calibration)
    prepared = _prepare_static(model, input_shape)
    with torch.no_grad():
        # Weight observers only see the weights during a forward pass; the
        # activation ranges this pass records are overwritten just below.
        prepared(_example(1, input_shape=input_shape))
    observers = _activation_observers(prepared)
    missing = set(observers) - set(ranges)
    if missing:
        raise KeyError(f"calibration ranges missing for {sorted(missing)}")
    for key, observer in observers.items():
        lo, hi = ranges[key]
        observer.min_val = torch.tensor(float(lo))
        observer.max_val = torch.tensor(float(hi))
    return _finish_convert(prepared)


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """Copy of ``model`` with int8 Linear weights and per-batch dynamic int8 activations.

    torchao ``quantize_(Int8DynamicActivationInt8WeightConfig())``; convolutions
    stay float32 because torchao offers no dynamic-activation conv config.
    The input model is not mutated.
    """
    quantized = copy.deepcopy(model).eval()
    quantize_(quantized, Int8DynamicActivationInt8WeightConfig())
    return quantized


def prepare_qat(model: nn.Module, input_shape: Sequence[int] | None = None) -> torch.fx.GraphModule:
    """Trainable copy of ``model`` with fake quantization (PT2E QAT, X86 int8 scheme).

    Train it with ``fedsqueeze.train.train`` (masks work: parameter names such
    as ``conv1.weight`` are preserved), then call :func:`convert_qat`.
    ``input_shape`` is one example's shape (default :func:`default_input_shape`).
    The input model is not mutated.
    """
    model = copy.deepcopy(model).train()
    return _prepare(export_module(model, input_shape=input_shape).module(), _static_quantizer(is_qat=True), qat=True)


def convert_qat(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Int8 model from a QAT-trained graph (same format as :func:`quantize_static_int8`).

    Consumes ``prepared``: ``convert_pt2e`` rewrites it in place.
    """
    prepared.eval()  # freezes the fake-quant observers before conversion
    return _finish_convert(prepared)


class _Cast(nn.Module):
    """Runs ``inner`` in ``dtype`` and returns float32 logits, so callers feed float32 images."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = inner
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(self.dtype)).float()


def cast_model(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Copy of ``model`` with all parameters in ``dtype`` (float16 or bfloat16); input not mutated."""
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"cast_model: unsupported dtype {dtype}")
    return _Cast(copy.deepcopy(model).to(dtype).eval(), dtype)


def is_pt2e_int8(model: nn.Module) -> bool:
    """True if ``model`` is a graph with static PT2E quantize ops (what :func:`lower_int8_x86` accepts)."""
    if not isinstance(model, torch.fx.GraphModule):
        return False
    q = torch.ops.quantized_decomposed.quantize_per_tensor.default
    return any(n.op == "call_function" and n.target == q for n in model.graph.nodes)


def lower_int8_x86(model: torch.fx.GraphModule, batch: int) -> torch.fx.GraphModule:
    """The PT2E int8 graph rewritten onto oneDNN int8 conv/linear kernels, for one batch size.

    ``lower_pt2e_quantized_to_x86`` re-exports statically, so the result only
    accepts ``batch`` images. Its oneDNN convs return channels-last tensors,
    on which the ``aten.view`` that ``flatten`` traces to fails at run time
    ("view size is not compatible ..."); ``reshape`` computes the same values
    and copies when needed, so every view is replaced by a reshape. (Compiling
    the same graph with ``torch.compile`` fails on this torch build with a
    stride assertion in the quantized conv lowering.)

    ``model`` is not mutated.
    """
    with torch.no_grad():
        lowered = lower_pt2e_quantized_to_x86(model, (_example(batch, input_shape=_graph_input_shape(model)),))
    for node in lowered.graph.nodes:
        if node.op == "call_function" and node.target == torch.ops.aten.view.default:
            node.target = torch.ops.aten.reshape.default
    lowered.recompile()
    return lowered


def _graph_input_shape(model: torch.fx.GraphModule) -> tuple[int, ...] | None:
    """One example's shape as recorded when ``model`` was exported (``None`` if the graph does not say)."""
    for node in model.graph.nodes:
        if node.op == "placeholder":
            val = node.meta.get("val")
            if val is not None and hasattr(val, "shape") and len(val.shape) >= 2:
                return tuple(int(d) for d in val.shape[1:])
            return None
    return None
