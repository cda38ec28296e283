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

from collections.abc import Mapping, Sequence

import numpy as np

import compression

__all__ = ["uplink_reference"]


def uplink_reference(delta_payloads: Sequence[bytes], shapes: Mapping[str, tuple[int, ...]]
                     ) -> dict[str, np.ndarray]:
    """Per tensor, the sorted flat positions where any received delta is non-zero.

    Parameters
    ----------
    delta_payloads : sequence of bytes
        The delta payloads of the train message; empty for a whole model.
    shapes : mapping of str to tuple of int
        The model's names and shapes (payloads with compact headers need them).

    Raises
    ------
    compression.PayloadError
        A payload is malformed (the client has already refused it by then).
    """
    return compression.union_support(compression.decode(p, expected=shapes) for p in delta_payloads)
