"""Error feedback (residual accumulation) as a pure function over explicit state.

Contract, per tensor and round::

    compensated  = update + residual
    sent         = compress(compensated)
    new_residual = compensated - decode(sent)

hence ``update + residual == decode(sent) + new_residual`` up to float32
rounding.  Nothing is stored here: the caller (a Flower client) keeps the
residual wherever it likes and passes it back next round.  A ``None``
residual means zeros (first round).
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch

from .errors import UpdateError

__all__ = ["compensate", "new_residual", "feedback_step"]


def compensate(update: Mapping[str, torch.Tensor],
               residual: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Return ``update + residual`` as new float32 tensors (inputs untouched).

    Raises
    ------
    UpdateError
        If the residual's names or shapes differ from the update's.
    """
    if residual is None:
        return {k: v.detach().to(torch.float32).clone() for k, v in update.items()}
    if set(residual) != set(update):
        missing = sorted(set(update) ^ set(residual))
        raise UpdateError(f"residual and update have different tensors: {missing[:5]}")
    out = {}
    for k, v in update.items():
        r = residual[k]
        if not isinstance(r, torch.Tensor) or tuple(r.shape) != tuple(v.shape):
            raise UpdateError(f"residual {k!r} has shape {tuple(getattr(r, 'shape', ()))}, update has {tuple(v.shape)}")
        out[k] = v.detach().to(torch.float32) + r.detach().to(device=v.device, dtype=torch.float32)
    return out


def new_residual(compensated: Mapping[str, torch.Tensor],
                 decoded: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return ``compensated - decoded`` per tensor (float32)."""
    return {k: v.to(torch.float32) - decoded[k].to(device=v.device, dtype=torch.float32)
            for k, v in compensated.items()}


def feedback_step(update: Mapping[str, torch.Tensor], residual: Mapping[str, torch.Tensor] | None,
                  roundtrip: Callable[[Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]]
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One error-feedback step around any compressor.

    Parameters
    ----------
    update, residual : mapping of str to Tensor
    roundtrip : callable
        ``compensated -> decode(compress(compensated))``.

    Returns
    -------
    decoded, new_residual : dict of str to Tensor
    """
    comp = compensate(update, residual)
    dec = dict(roundtrip(comp))
    return dec, new_residual(comp, dec)
