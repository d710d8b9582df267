"""Slates in Redis: the first published content of every rec_id, and the latest slate per listener.

- **First content wins.** Before a slate is published its bytes are stored under its rec_id
  (``SET NX GET``: the first writer keeps the key, a later one gets the stored bytes back), and
  before a batch is computed the worker looks up the rec_ids its requests would get. So a
  request redelivered after a crash, a rebalance or a duplicate send is answered with the very
  slate published the first time (same rec_id, same tracks, same bytes), never another draw.
  The keys live ``ttl_s`` (default an hour: far longer than a record stays unacknowledged).
- **Latest per listener**, for ``GET /v1/recommendations/{user}`` on any worker.

Keys carry the listener's hash tag, so they sit in the same Cluster slot as the rest of their state.
"""

from __future__ import annotations

import uuid

import redis

from schemas.events import Recommendation

TTL_S = 86_400  # the latest slate per listener
SLATE_TTL_S = 3_600  # a published slate, by rec_id


class SlateCache:
    def __init__(self, client: redis.Redis, prefix: str = "enc", ttl_s: float = SLATE_TTL_S) -> None:
        self.redis = client
        self.prefix = prefix
        self.ttl_s = max(1, int(ttl_s))

    def key(self, user: str) -> str:
        return f"{self.prefix}:{{{user}}}:rec"  # the listener's hash tag: same slot as their state

    def rec_key(self, user: str, rec_id: uuid.UUID) -> str:
        return f"{self.prefix}:{{{user}}}:r:{rec_id}"

    def published(self, wanted: list[tuple[str, uuid.UUID]]) -> dict[uuid.UUID, bytes]:
        """The stored bytes of every (listener, rec_id) already published; one round trip."""
        if not wanted:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for user, rec_id in wanted:
            pipe.get(self.rec_key(user, rec_id))
        return {rec_id: raw for (_, rec_id), raw in zip(wanted, pipe.execute(), strict=True) if raw is not None}

    def claim(self, slates: list[tuple[Recommendation, bytes]]) -> list[bytes | None]:
        """Store each slate's bytes under its rec_id unless some are stored already, and make it
        its listener's latest; one round trip. Per slate: None when it was stored now, else the
        bytes stored first (publish those instead)."""
        if not slates:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for slate, raw in slates:
            pipe.set(self.rec_key(slate.user_id, slate.rec_id), raw, ex=self.ttl_s, nx=True, get=True)
            pipe.set(self.key(slate.user_id), slate.model_dump_json(), ex=TTL_S)
        return list(pipe.execute()[0::2])

    def put_many(self, slates: list[Recommendation]) -> None:
        """Make these the latest slates of their listeners (a later one for the same listener wins)."""
        if not slates:
            return
        pipe = self.redis.pipeline(transaction=False)
        for s in slates:
            pipe.set(self.key(s.user_id), s.model_dump_json(), ex=TTL_S)
        pipe.execute()

    def get(self, user: str) -> Recommendation | None:
        raw = self.redis.get(self.key(user))
        return Recommendation.model_validate_json(raw) if raw else None
