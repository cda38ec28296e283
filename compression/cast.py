"""Half-precision casts (float16, bfloat16) to and from little-endian bytes."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["to_fp16", "from_fp16", "to_bf16", "from_bf16"]

_FP16_MAX = float(np.finfo(np.float16).max)
_BF16_MAX = float(torch.finfo(torch.bfloat16).max)


def to_fp16(x: np.ndarray) -> bytes:
    """Round to float16; values beyond +-65504 saturate instead of becoming inf."""
    return np.clip(x, -_FP16_MAX, _FP16_MAX).astype("<f2").tobytes()


def from_fp16(data: bytes, count: int) -> np.ndarray:
    """Decode ``count`` float16 values (caller checks length and finiteness)."""
    return np.frombuffer(data, dtype="<f2", count=count).astype(np.float32)


def to_bf16(x: np.ndarray) -> bytes:
    """Round to bfloat16 (nearest even), saturating at the bfloat16 maximum."""
    t = torch.from_numpy(np.clip(x, -_BF16_MAX, _BF16_MAX).astype(np.float32)).to(torch.bfloat16)
    return t.view(torch.int16).numpy().astype("<i2").tobytes()


def from_bf16(data: bytes, count: int) -> np.ndarray:
    """Decode ``count`` bfloat16 values: they are the top 16 bits of a float32."""
    u = np.frombuffer(data, dtype="<u2", count=count).astype(np.uint32) << 16
    return u.view(np.float32)
