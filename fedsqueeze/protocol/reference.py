"""What a ``coder=context`` uplink is coded against, decided once for both sides (Flower-free).

The reference is the support of the model deltas the client received this
round: the union of the non-zero positions of each delta payload of the train
message (a chain or one catch-up). A client that received a whole model
(``base_version == FULL_MODEL``) or nothing (round 1 from the seeded initial
model) has an empty reference. The client computes it from the payloads it
decoded, the server from the payloads it sent, so both hold the same positions
without a byte on the wire (a digest in the payload checks it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

import compression
from fedsqueeze.protocol.instructions import FULL_MODEL

__all__ = ["uplink_reference"]


def uplink_reference(base_version: int, supports: Iterable[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per tensor, the sorted flat positions where any received delta is non-zero.

    Parameters
    ----------
    base_version : int
        The train instruction's ``base_version``; :data:`FULL_MODEL` (a whole
        model was sent, not deltas) gives an empty reference, and ``supports``
        is not read.
    supports : iterable of mappings of str to int64 arrays
        :func:`compression.support` of each delta payload of the train message,
        in any order.
    """
    if base_version == FULL_MODEL:
        return {}
    return compression.union_support(supports)
