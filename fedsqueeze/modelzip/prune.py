"""Weight pruning with ``torch.nn.utils.prune``, made permanent, returning masks.

Every ``prune_*`` function applies a ``torch.nn.utils.prune`` method, reads the
resulting ``weight_mask`` buffers and then calls ``prune.remove`` so the model
is a plain module again (parameter names unchanged, pruned entries exactly
zero). The returned masks ``{parameter name: 0/1 float tensor}`` plug straight
into ``fedsqueeze.train.train(..., masks=...)``, which keeps them zero during
fine-tuning.

Amounts are *cumulative* targets: ``amount=0.8`` on a model already pruned to
50 % leaves 80 % of the selected weights zero. This holds because the weights
already zero have the smallest magnitude (and a zero Taylor score), so the
ranking selects them first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils import prune

__all__ = [
    "prunable_names",
    "prune_global_l1",
    "prune_layer_l1",
    "prune_structured_ln",
    "prune_by_scores",
    "magnitude_scores",
    "taylor_scores",
    "add_scores",
    "masks_of",
    "sparsity",
    "iterative_schedule",
]

_PRUNABLE = (nn.Conv2d, nn.Linear)


def prunable_names(model: nn.Module, kinds: tuple[type[nn.Module], ...] = _PRUNABLE) -> list[str]:
    """Names of the ``weight`` parameters of every Conv2d/Linear (or ``kinds``) module."""
    return [f"{name}.weight" for name, mod in model.named_modules() if isinstance(mod, kinds)]


def _targets(model: nn.Module, params: Sequence[str] | None) -> list[tuple[nn.Module, str, str]]:
    """``(module, attribute, full name)`` for each selected parameter."""
    names = list(params) if params is not None else prunable_names(model)
    modules = dict(model.named_modules())
    out = []
    for full in names:
        mod_name, _, attr = full.rpartition(".")
        if mod_name not in modules or not isinstance(getattr(modules[mod_name], attr, None), nn.Parameter):
            raise KeyError(f"{full!r} is not a parameter of the model")
        out.append((modules[mod_name], attr, full))
    return out


def _make_permanent(targets: Iterable[tuple[nn.Module, str, str]]) -> dict[str, torch.Tensor]:
    """Read each pruning mask, fold it into the parameter, drop the hook."""
    masks = {}
    for module, attr, full in targets:
        masks[full] = getattr(module, f"{attr}_mask").detach().clone().float()
        prune.remove(module, attr)
    return masks


def _check_amount(amount: float) -> None:
    if not 0.0 <= amount <= 1.0:
        raise ValueError(f"amount must be a fraction in [0, 1], got {amount}")


def prune_global_l1(model: nn.Module, amount: float, params: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Zero the ``amount`` fraction of smallest-|w| weights, ranked across all ``params``.

    Parameters
    ----------
    model : nn.Module
        Mutated in place: pruned entries of the selected parameters become 0.
    amount : float
        Cumulative fraction of the selected weights that is zero afterwards
        (rounded to the nearest whole weight by ``torch.nn.utils.prune``).
    params : sequence of str, optional
        Parameter names; default all Conv2d/Linear weights.

    Returns
    -------
    dict[str, Tensor]
        0/1 float masks per parameter (1 = kept).
    """
    _check_amount(amount)
    targets = _targets(model, params)
    prune.global_unstructured(
        [(m, a) for m, a, _ in targets], pruning_method=prune.L1Unstructured, amount=amount
    )
    return _make_permanent(targets)


def prune_layer_l1(model: nn.Module, amount: float, params: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Zero the ``amount`` fraction of smallest-|w| weights in *each* selected parameter.

    Same mutation and return value as :func:`prune_global_l1`, but every layer
    ends with the same sparsity instead of one global threshold.
    """
    _check_amount(amount)
    targets = _targets(model, params)
    for module, attr, _ in targets:
        prune.l1_unstructured(module, attr, amount=amount)
    return _make_permanent(targets)


def prune_structured_ln(
    model: nn.Module,
    amount: float,
    n: float = 2,
    dim: int = 0,
    params: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Zero whole slices (default: output channels) with the smallest L``n`` norm, per layer.

    Parameters
    ----------
    model : nn.Module
        Mutated in place. With ``dim=0`` the biases of pruned output channels
        are zeroed too, so those channels output exactly zero after ReLU.
    amount : float
        Fraction of slices along ``dim`` removed in each selected parameter.
    n : float
        Norm order used to rank slices (``torch.nn.utils.prune.ln_structured``).
    dim : int
        0 = output channels / rows, 1 = input channels / columns.
    params : sequence of str, optional
        Default: Conv2d weights only, because removing output rows of the
        classifier would delete classes.

    Returns
    -------
    dict[str, Tensor]
        0/1 float masks, including ``<layer>.bias`` masks when ``dim=0``.
    """
    _check_amount(amount)
    targets = _targets(model, params if params is not None else prunable_names(model, (nn.Conv2d,)))
    for module, attr, _ in targets:
        prune.ln_structured(module, attr, amount=amount, n=n, dim=dim)
    masks = _make_permanent(targets)
    if dim == 0:
        for module, _, full in targets:
            if getattr(module, "bias", None) is None:
                continue
            channel_kept = masks[full].flatten(1).amax(1)
            with torch.no_grad():
                module.bias.mul_(channel_kept)
            masks[full.rpartition(".")[0] + ".bias"] = channel_kept
    return masks


def prune_by_scores(
    model: nn.Module, scores: Mapping[str, torch.Tensor], amount: float
) -> dict[str, torch.Tensor]:
    """Zero the ``amount`` fraction of weights with the lowest importance, ranked globally.

    Parameters
    ----------
    model : nn.Module
        Mutated in place: the parameters named in ``scores`` lose their
        lowest-scored entries.
    scores : Mapping[str, Tensor]
        Non-negative importance per parameter, same shapes as the parameters
        (e.g. :func:`taylor_scores`, possibly summed over clients with
        :func:`add_scores`).
    amount : float
        Cumulative fraction of the scored weights that is zero afterwards.

    Returns
    -------
    dict[str, Tensor]
        0/1 float masks per scored parameter.
    """
    _check_amount(amount)
    targets = _targets(model, list(scores))
    importance = {}
    for module, attr, full in targets:
        score = scores[full]
        if score.shape != getattr(module, attr).shape:
            raise ValueError(f"score for {full} has shape {tuple(score.shape)}, parameter has {tuple(getattr(module, attr).shape)}")
        importance[(module, attr)] = score.detach().float()
    prune.global_unstructured(
        list(importance), pruning_method=prune.L1Unstructured, importance_scores=importance, amount=amount
    )
    return _make_permanent(targets)


def magnitude_scores(model: nn.Module, params: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """``|w|`` per selected parameter (copies; the model is not mutated)."""
    return {full: getattr(m, a).detach().abs().clone() for m, a, full in _targets(model, params)}


def taylor_scores(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 256,
    params: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """First-order Taylor importance ``sum over batches of |w * dL/dw|``.

    Each batch contributes ``|w * grad|`` of its mean cross-entropy loss, so
    the result is a plain sum over batches: clients can send their sums and
    the server adds them (:func:`add_scores`); a client's weight in the total
    grows with its number of batches.

    Parameters
    ----------
    model : nn.Module
        Only read: gradients come from ``torch.autograd.grad``, so neither the
        parameters nor their ``.grad`` fields change. Its train/eval mode is
        left as is.
    x, y : Tensor
        Calibration inputs ``(N, *input_shape)`` and integer labels.
    batch_size : int
        Batch size of the loss whose gradient is taken.
    params : sequence of str, optional
        Default all Conv2d/Linear weights.

    Returns
    -------
    dict[str, Tensor]
        Non-negative float32 scores shaped like the parameters.
    """
    if len(y) == 0:
        raise ValueError("taylor_scores: no calibration data")
    targets = _targets(model, params)
    tensors = [getattr(m, a) for m, a, _ in targets]
    sums = [torch.zeros_like(t, dtype=torch.float32) for t in tensors]
    loss_fn = nn.CrossEntropyLoss()
    for lo in range(0, len(y), batch_size):
        loss = loss_fn(model(x[lo : lo + batch_size]), y[lo : lo + batch_size])
        grads = torch.autograd.grad(loss, tensors)
        for acc, w, g in zip(sums, tensors, grads):
            acc.add_((w.detach() * g).abs().float())
    return {full: s for (_, _, full), s in zip(targets, sums)}


def add_scores(score_dicts: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Elementwise sum of per-parameter score dicts (the server-side merge).

    Raises
    ------
    ValueError
        If the list is empty or the dicts do not name the same parameters.
    """
    if not score_dicts:
        raise ValueError("add_scores: nothing to add")
    keys = set(score_dicts[0])
    if any(set(d) != keys for d in score_dicts):
        raise ValueError("add_scores: score dicts name different parameters")
    return {k: torch.stack([d[k].float() for d in score_dicts]).sum(0) for k in score_dicts[0]}


def masks_of(model: nn.Module, params: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Masks derived from zeros: 1 where the parameter is non-zero (model not mutated).

    Use it for a model pruned elsewhere (e.g. a received global model); a
    weight that is zero by coincidence counts as pruned.
    """
    return {full: (getattr(m, a).detach() != 0).float() for m, a, full in _targets(model, params)}


def sparsity(model: nn.Module, params: Sequence[str] | None = None) -> float:
    """Fraction of exactly-zero entries among the selected parameters (default Conv2d/Linear weights)."""
    tensors = [getattr(m, a).detach() for m, a, _ in _targets(model, params)]
    total = sum(t.numel() for t in tensors)
    zeros = sum(int((t == 0).sum()) for t in tensors)
    return zeros / total if total else 0.0


def iterative_schedule(target: float, steps: int) -> list[float]:
    """Cumulative sparsity after each of ``steps`` prune rounds, ending at ``target``.

    Each round removes the same fraction of the weights still alive (density
    shrinks geometrically), the usual iterative magnitude pruning schedule:
    ``iterative_schedule(0.8, 2) == [0.553..., 0.8]``; ``steps=1`` is one-shot.
    """
    _check_amount(target)
    if steps < 1:
        raise ValueError("steps must be >= 1")
    density = 1.0 - target
    amounts = [1.0 - density ** (k / steps) for k in range(1, steps)]
    return amounts + [target]
