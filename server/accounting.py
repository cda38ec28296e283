"""Exact wire-byte accounting of Flower messages.

Flower 1.42 ships a Message as content-addressed objects (Message → RecordDict
→ records → Array → ArrayChunk), each deflated to bytes once. The size of a
message on the wire is the sum of those deflated objects; this is what the
SuperLink counts too (cross-checked to within 0.01 %, see
``../shared/notes/flower-1.42.md``).

An object's id is the SHA-256 of its deflated bytes, so its size is a
function of its id: sizes are memoized by id, and a payload shared by many
messages (a full-model broadcast) is deflated for its size only once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from flwr.app import Message
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, no_object_id_recompute

__all__ = ["message_bytes", "messages_bytes", "each_message_bytes"]

_SIZES: OrderedDict[str, int] = OrderedDict()
_MAX_SIZES = 4096


def message_bytes(msg: Message) -> int:
    """Serialized size in bytes of ``msg`` as pushed to / pulled from the SuperLink."""
    total = 0
    for object_id, obj in get_all_nested_objects(msg).items():
        size = _SIZES.get(object_id)
        if size is None:
            size = len(obj.deflate())
            _SIZES[object_id] = size
            if len(_SIZES) > _MAX_SIZES:
                _SIZES.popitem(last=False)
        total += size
    return total


def messages_bytes(msgs: Iterable[Message]) -> int:
    """Sum of :func:`message_bytes` over ``msgs``.

    Objects the messages share (one broadcast record in every message of a
    round) are hashed once, not once per message: within Flower's
    ``no_object_id_recompute`` an object's id is computed once and reused,
    as Flower itself does when it pushes messages.
    """
    with no_object_id_recompute():
        return sum(message_bytes(m) for m in msgs)


def each_message_bytes(msgs: Iterable[Message]) -> list[int]:
    """:func:`message_bytes` of each message, shared objects hashed once (see :func:`messages_bytes`)."""
    with no_object_id_recompute():
        return [message_bytes(m) for m in msgs]
