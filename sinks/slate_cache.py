"""The latest slate per listener in Redis, for GET /v1/recommendations/{user} on any worker."""

from __future__ import annotations

import redis

from schemas.events import Recommendation

TTL_S = 86_400


class SlateCache:
    def __init__(self, client: redis.Redis, prefix: str = "enc") -> None:
        self.redis = client
        self.prefix = prefix

    def key(self, user: str) -> str:
        return f"{self.prefix}:{{{user}}}:rec"  # the listener's hash tag: same slot as their state

    def put_many(self, slates: list[Recommendation]) -> None:
        """One pipeline for the batch; a later slate for the same listener wins."""
        if not slates:
            return
        pipe = self.redis.pipeline(transaction=False)
        for s in slates:
            pipe.set(self.key(s.user_id), s.model_dump_json(), ex=TTL_S)
        pipe.execute()

    def get(self, user: str) -> Recommendation | None:
        raw = self.redis.get(self.key(user))
        return Recommendation.model_validate_json(raw) if raw else None
