"""Exact wire-byte accounting of Flower messages.

Flower 1.42 ships a Message as content-addressed objects (Message → RecordDict
→ records → Array → ArrayChunk), each deflated to bytes once. The size of a
message on the wire is the sum of those deflated objects; this is what the
SuperLink counts too (cross-checked to within 0.01 %, see
``../shared/notes/flower-1.42.md``).
"""

from __future__ import annotations

from flwr.app import Message
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

__all__ = ["message_bytes"]


def message_bytes(msg: Message) -> int:
    """Serialized size in bytes of ``msg`` as pushed to / pulled from the SuperLink."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(msg).values())
