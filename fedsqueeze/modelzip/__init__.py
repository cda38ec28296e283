"""Model-level compression of a (global) model: prune, fine-tune, quantize, export.

Flower-free toolbox; the federated round loop calls these functions.

* :mod:`.prune` — L1 / Ln-structured / score-based pruning, Taylor scores,
  masks for ``fedsqueeze.train.train(..., masks=...)``, schedules.
* :mod:`.quantize` — static int8 with mergeable calibration ranges, dynamic
  int8, QAT, float16/bfloat16 casts, oneDNN int8 lowering.
* :mod:`.export` — ``.pt2`` artifacts.
* :mod:`.measure` — accuracy, non-zeros, size, latency, bf16 training effect.
"""

from .export import file_size, load_artifact, save_artifact
from .measure import count_nonzero, latency_ms, markdown_table, measure_bf16_training, single_thread, stage_report
from .prune import (
    add_scores,
    iterative_schedule,
    magnitude_scores,
    masks_of,
    prunable_names,
    prune_by_scores,
    prune_global_l1,
    prune_layer_l1,
    prune_structured_ln,
    sparsity,
    taylor_scores,
)
from .quantize import (
    cast_model,
    convert_qat,
    export_module,
    is_pt2e_int8,
    lower_int8_x86,
    merge_ranges,
    observe_ranges,
    prepare_qat,
    quantize_dynamic_int8,
    quantize_static_int8,
)

__all__ = [
    "add_scores", "cast_model", "convert_qat", "count_nonzero", "export_module", "file_size",
    "is_pt2e_int8", "iterative_schedule", "latency_ms", "load_artifact", "lower_int8_x86",
    "magnitude_scores", "markdown_table", "masks_of", "measure_bf16_training", "merge_ranges",
    "observe_ranges", "prepare_qat", "prunable_names", "prune_by_scores", "prune_global_l1",
    "prune_layer_l1", "prune_structured_ln", "quantize_dynamic_int8", "quantize_static_int8",
    "save_artifact", "single_thread", "sparsity", "stage_report", "taylor_scores",
]
