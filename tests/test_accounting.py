"""server.accounting: shared objects are hashed once, and the byte count does not change."""

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from server.accounting import message_bytes, messages_bytes


def test_messages_bytes_equals_the_sum_over_messages_sharing_a_record(instruction):
    shared = ArrayRecord({"w": Array(np.arange(300_000, dtype=np.float32))})
    msgs = [Message(RecordDict({"model": shared, "config": ConfigRecord({"round": i})}), 7 + i, "train",
                    group_id="1") for i in range(3)]
    msgs.append(Message(RecordDict({"model": ArrayRecord({"w": Array(np.ones(10, np.float32))})}), 11, "train",
                        group_id="1"))
    each = [message_bytes(m) for m in msgs]
    assert messages_bytes(msgs) == sum(each)
    assert each[0] > 1_200_000 > each[3]  # the shared payload is counted in every message that carries it
    assert messages_bytes([]) == 0
