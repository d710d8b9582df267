"""What a listener chooses, and forgetting a listener, in Redis.

Keys (next to the gamification keys, under the same prefix and the listener's hash tag)::

    enc:{USER}:avatar     string  the avatar item the listener equipped (one they unlocked)
    enc:forgotten         hash    USER -> when their erasure was asked (ISO time); workers drop
                                  the listener's events and erase what they hold of them
    enc:forgotten:v       string  bumped on every erasure request: workers re-read the hash when it moves

Erasing a listener (:meth:`ListenerStore.erase`) deletes every key under their hash tag (state,
event marks, listening days, outbox, equipped avatar, published slates) and their entry on every
leaderboard. The erasure request itself is the one thing kept: it is what stops the listener's
events still on the topic (until its retention deletes them) from being counted again.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime

import redis

from sinks.gamification import PREFIX, GamificationStore

_GLOB = re.compile(r"([*?\[\]\\])")


class NotUnlocked(ValueError):
    """An avatar item the listener has not unlocked."""


class ListenerStore:
    def __init__(self, client: redis.Redis, prefix: str = PREFIX) -> None:
        self.redis = client
        self.prefix = prefix

    def _tag(self, user: str) -> str:
        return f"{self.prefix}:{{{user}}}"

    # --- avatars ----------------------------------------------------------------------------
    def equip(self, gamification: GamificationStore, user: str, item: str) -> None:
        """Equip ``item``; raises :class:`NotUnlocked` unless the listener unlocked it."""
        unlocked = gamification.profile(user)["avatar_items"]
        if item not in unlocked:
            have = ", ".join(unlocked) or "none yet"
            raise NotUnlocked(f"{user!r} has not unlocked avatar item {item!r} (unlocked: {have})")
        self.redis.set(f"{self._tag(user)}:avatar", item)

    def avatars(self, users: Iterable[str]) -> dict[str, str | None]:
        """user -> the equipped item (None: none equipped)."""
        users = list(dict.fromkeys(users))
        if not users:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for u in users:
            pipe.get(f"{self._tag(u)}:avatar")
        return {u: (v.decode() if v is not None else None) for u, v in zip(users, pipe.execute(), strict=True)}

    # --- forgetting -------------------------------------------------------------------------
    @property
    def forgotten_key(self) -> str:
        return f"{self.prefix}:forgotten"

    def request_erasure(self, user: str, at: datetime | None = None) -> None:
        """Record that ``user`` is to be forgotten (every worker acts on it)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hsetnx(self.forgotten_key, user, (at or datetime.now(UTC)).isoformat())
        pipe.incr(f"{self.forgotten_key}:v")
        pipe.execute()

    def forgotten_version(self) -> int:
        return int(self.redis.get(f"{self.forgotten_key}:v") or 0)

    def forgotten(self) -> dict[str, str]:
        """user -> when their erasure was asked."""
        return {k.decode(): v.decode() for k, v in self.redis.hgetall(self.forgotten_key).items()}

    def erase(self, user: str) -> int:
        """Delete every key of the listener and their entries on every board; returns how many
        keys and board entries went. Idempotent."""
        n = 0
        mine = _GLOB.sub(r"\\\1", self._tag(user)) + ":*"
        batch = list(self.redis.scan_iter(match=mine, count=1000))
        if batch:
            n += int(self.redis.delete(*batch))
        for key in self.redis.scan_iter(match=f"{self.prefix}:lb:*", count=1000):
            kind = self.redis.type(key)
            if kind == b"zset":
                n += int(self.redis.zrem(key, user))
            elif kind == b"hash":  # a board's per-listener versions (Redis Cluster)
                self.redis.hdel(key, user)
        return n

    def holds(self, user: str) -> list[str]:
        """What Redis still holds of the listener: their keys and the boards they are on."""
        mine = _GLOB.sub(r"\\\1", self._tag(user)) + ":*"
        left = [k.decode() for k in self.redis.scan_iter(match=mine, count=1000)]
        for key in self.redis.scan_iter(match=f"{self.prefix}:lb:*", count=1000):
            if self.redis.type(key) == b"zset" and self.redis.zscore(key, user) is not None:
                left.append(f"{key.decode()} (member)")
        return left


