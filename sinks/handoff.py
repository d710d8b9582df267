"""Listener state handed from a partition's old owner to its new one, through Redis.

When a rebalance takes an events partition from a worker, the worker exports the state of that
partition's listeners (profiles, recent plays, open decisions with their feedback) and puts it
here with the offset it covers; the worker that is assigned the partition takes it (and the key
is deleted), so a moved listener arrives warm and feedback to a decision made on the old owner
is joined on the new one. Kafka's eager rebalance revokes everywhere before it assigns anywhere,
so the put happens before the take. Keys: ``<prefix>:handoff:{<app id>}:<partition>``, a hash
with ``state`` and ``offset``, kept a day.
"""

from __future__ import annotations

import redis

TTL_S = 86_400


class HandoffStore:
    def __init__(self, client: redis.Redis, prefix: str, app_id: str) -> None:
        self.redis = client
        self.prefix = prefix
        self.app_id = app_id

    def key(self, partition: int) -> str:
        return f"{self.prefix}:handoff:{{{self.app_id}}}:{partition}"

    def put(self, partition: int, state: bytes, offset: int) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.key(partition))
        pipe.hset(self.key(partition), mapping={"state": state, "offset": offset})
        pipe.expire(self.key(partition), TTL_S)
        pipe.execute()

    def take(self, partition: int) -> tuple[bytes, int] | None:
        """The state left for this partition, removed from the store; None if there is none."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hgetall(self.key(partition))
        pipe.delete(self.key(partition))
        got, _ = pipe.execute()
        if not got:
            return None
        return got[b"state"], int(got[b"offset"])
