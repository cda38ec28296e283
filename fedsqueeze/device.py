"""Where tensors are computed: the ``device`` run-config key (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``).

Training and evaluation (clients and server), and the model stages' float
computations, run on the resolved device; every tensor that leaves them
(updates, payloads, checkpoints, the global model) is on the CPU, so the
codecs and the byte ledger do not depend on it. ``cpu`` is the default and the
tested setting: on it, results are bit-identical to runs before the key
existed. ``auto`` picks the first CUDA device when this process sees one, else
the CPU, so it may differ between the server and the clients (a client without
a GPU trains on its CPU).
"""

from __future__ import annotations

import re

import torch

__all__ = ["DEVICE_CHOICES", "DeviceUnavailable", "check_device", "resolve_device"]

#: What the ``device`` key accepts (``N`` a CUDA device index).
DEVICE_CHOICES = "auto | cpu | cuda | cuda:N"
_PATTERN = re.compile(r"auto|cpu|cuda|cuda:(0|[1-9][0-9]*)")


class DeviceUnavailable(RuntimeError):
    """A CUDA device was requested but this process has none (or not that index)."""


def check_device(text: str) -> None:
    """Check the syntax of a ``device`` value (not whether the device exists here).

    Raises
    ------
    ValueError
        If ``text`` is not one of ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
    """
    if not isinstance(text, str) or not _PATTERN.fullmatch(text):
        raise ValueError(f"device must be one of {DEVICE_CHOICES}, got {text!r}")


def resolve_device(text: str) -> torch.device:
    """The ``torch.device`` a ``device`` value means in this process.

    Raises
    ------
    ValueError
        Bad syntax (see :func:`check_device`).
    DeviceUnavailable
        ``cuda`` / ``cuda:N`` requested but CUDA is not available here, or ``N``
        is not a visible device. The message says how to give Flower
        simulation clients a GPU.
    """
    check_device(text)
    if text == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if text == "auto":
        return torch.device("cuda") if available else torch.device("cpu")
    if not available:
        raise DeviceUnavailable(
            f"device {text!r} requested, but this process sees no CUDA device (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda or 'none'}). Use device='cpu' or 'auto'; in a Flower simulation, "
            "clients see a GPU only when the federation gives them one (client-resources-num-gpus > 0, "
            "see the README, \"Running on a GPU\").")
    index = int(text.split(":")[1]) if ":" in text else 0
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceUnavailable(f"device {text!r} requested, but this process sees {count} CUDA device(s) "
                                f"(cuda:0 .. cuda:{count - 1}; CUDA_VISIBLE_DEVICES renumbers them)")
    return torch.device("cuda", index)
