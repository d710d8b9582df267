"""What a listener chooses, and forgetting a listener, in Redis.

Keys (next to the gamification keys, under the same prefix and the listener's hash tag)::

    enc:{USER}:avatar     string  the avatar item the listener equipped (one they unlocked)
    enc:{USER}:fr         hash    FRIEND -> ms: the listeners USER follows (> 0: followed at that
                                  event time, < 0: unfollowed; the latest event time wins, so
                                  redelivered or reordered follow / unfollow events agree)
    enc:{USER}:fo         hash    FOLLOWER -> ms: the same edges seen from the other end
    enc:{USER}:privacy    hash    listening / activity: followers | nobody; board: everyone | followers | nobody
    enc:{USER}:rp         zset    TRACK -> ms: the listener's latest completions (friends' candidates)
    enc:{USER}:act        zset    JSON item -> ms: their likes and achievements (their followers' feed)
    enc:{USER}:lists      string  JSON: their lists (online_models.lists) and when each was built
    enc:forgotten         hash    USER -> when their erasure was asked (ISO time); workers drop
                                  the listener's events and erase what they hold of them
    enc:forgotten:v       string  bumped on every erasure request: workers re-read the hash when it moves

Erasing a listener (:meth:`ListenerStore.erase`) deletes every key under their hash tag (state,
event marks, listening days, outbox, equipped avatar, published slates) and their entry on every
leaderboard. The erasure request itself is the one thing kept: it is what stops the listener's
events still on the topic (until its retention deletes them) from being counted again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis

from sinks.gamification import PREFIX, GamificationStore

_GLOB = re.compile(r"([*?\[\]\\])")
RECENT_KEPT = 30  # completions kept per listener for their followers' candidates
ACTIVITY_KEPT = 50  # feed items kept per listener
PRIVACY = {"listening": ("followers", "nobody"), "activity": ("followers", "nobody"),
           "board": ("everyone", "followers", "nobody")}
PRIVACY_DEFAULT = {name: values[0] for name, values in PRIVACY.items()}

# an edge's latest event time wins: ARGV = [ms, signed value]; a tie keeps what is there
EDGE = """
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local new = tonumber(ARGV[2])
if math.abs(new) > math.abs(cur) then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) return 1 end
return 0
"""


@dataclass(frozen=True)
class Social:
    """What one batch changes of the listeners' social state (computed in the pure step)."""

    edges: list[tuple[str, str, int, bool]] = field(default_factory=list)  # (user, friend, ms, follows)
    completions: list[tuple[str, str, int]] = field(default_factory=list)  # (user, track, ms)
    activity: list[tuple[str, str, int]] = field(default_factory=list)  # (user, JSON item, ms)

    def __bool__(self) -> bool:
        return bool(self.edges or self.completions or self.activity)


class NotUnlocked(ValueError):
    """An avatar item the listener has not unlocked."""


class ListenerStore:
    def __init__(self, client: redis.Redis, prefix: str = PREFIX) -> None:
        self.redis = client
        self.prefix = prefix
        self._edge = client.register_script(EDGE)

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

    # --- friends ---------------------------------------------------------------------------
    def apply(self, social: Social) -> None:
        """Write one batch's social changes; every write is idempotent (redelivery changes nothing)."""
        if not social:
            return
        pipe = self.redis.pipeline(transaction=False)
        for user, friend, ms, follows in social.edges:
            value = ms if follows else -ms
            self._edge(keys=[f"{self._tag(user)}:fr"], args=[friend, value], client=pipe)
            self._edge(keys=[f"{self._tag(friend)}:fo"], args=[user, value], client=pipe)
        for suffix, rows, kept, newer in (("rp", social.completions, RECENT_KEPT, True),
                                          ("act", social.activity, ACTIVITY_KEPT, False)):
            by_user: dict[str, dict[str, int]] = {}
            for user, member, ms in rows:  # one ZADD and one trim per listener and batch
                got = by_user.setdefault(user, {})
                got[member] = max(ms, got.get(member, ms))
            for user, members in by_user.items():
                key = f"{self._tag(user)}:{suffix}"
                pipe.zadd(key, members, gt=newer)
                pipe.zremrangebyrank(key, 0, -kept - 1)
        pipe.execute()

    def following(self, users: Iterable[str]) -> dict[str, list[str]]:
        """user -> the listeners they follow now."""
        users = list(dict.fromkeys(users))
        pipe = self.redis.pipeline(transaction=False)
        for u in users:
            pipe.hgetall(f"{self._tag(u)}:fr")
        return {u: sorted(k.decode() for k, v in got.items() if int(v) > 0)
                for u, got in zip(users, pipe.execute(), strict=True)}

    def followers(self, user: str) -> list[str]:
        return sorted(k.decode() for k, v in self.redis.hgetall(f"{self._tag(user)}:fo").items() if int(v) > 0)

    def privacy(self, users: Iterable[str]) -> dict[str, dict[str, str]]:
        users = list(dict.fromkeys(users))
        pipe = self.redis.pipeline(transaction=False)
        for u in users:
            pipe.hgetall(f"{self._tag(u)}:privacy")
        return {u: {**PRIVACY_DEFAULT, **{k.decode(): v.decode() for k, v in got.items() if k.decode() in PRIVACY}}
                for u, got in zip(users, pipe.execute(), strict=True)}

    def set_privacy(self, user: str, choices: dict[str, str]) -> dict[str, str]:
        bad = {k: v for k, v in choices.items() if k not in PRIVACY or v not in PRIVACY[k]}
        if bad:
            raise ValueError(f"unknown privacy choices {bad}; allowed: {PRIVACY}")
        if choices:
            self.redis.hset(f"{self._tag(user)}:privacy", mapping=choices)
        return self.privacy([user])[user]

    def shared(self, user: str, what: str) -> list[str]:
        """The listeners ``user`` follows who let their followers see ``what`` (listening,
        activity, board)."""
        friends = self.following([user])[user]
        allowed = self.privacy(friends)
        return [f for f in friends if allowed[f][what] != "nobody"]

    def friends_listening(self, users: Iterable[str], per_friend: int = 10) -> dict[str, list[tuple[str, str]]]:
        """user -> (friend, track) their followed listeners finished lately, newest first, only
        from friends whose listening is shared."""
        users = list(dict.fromkeys(users))
        following = self.following(users)
        friends = sorted({f for fs in following.values() for f in fs})
        if not friends:
            return {u: [] for u in users}
        allowed = self.privacy(friends)
        pipe = self.redis.pipeline(transaction=False)
        for f in friends:
            pipe.zrevrange(f"{self._tag(f)}:rp", 0, per_friend - 1)
        recent = {f: [t.decode() for t in got] for f, got in zip(friends, pipe.execute(), strict=True)}
        return {u: [(f, t) for f in following[u] if allowed[f]["listening"] != "nobody" for t in recent[f]]
                for u in users}

    def feed(self, user: str, n: int = 30) -> list[dict[str, object]]:
        """The latest likes and achievements of the listeners ``user`` follows (those who share them)."""
        friends = self.shared(user, "activity")
        pipe = self.redis.pipeline(transaction=False)
        for f in friends:
            pipe.zrevrange(f"{self._tag(f)}:act", 0, n - 1, withscores=True)
        items = [{**json.loads(m), "user_id": f, "at_ms": int(sc)}
                 for f, got in zip(friends, pipe.execute(), strict=True) for m, sc in got]
        return sorted(items, key=lambda i: -int(i["at_ms"]))[:n]  # type: ignore[call-overload]

    # --- lists -----------------------------------------------------------------------------
    def put_lists(self, user: str, lists: dict[str, object], ttl_s: int = 8 * 86_400) -> None:
        self.redis.set(f"{self._tag(user)}:lists", json.dumps(lists), ex=ttl_s)

    def get_lists(self, user: str) -> dict[str, object] | None:
        raw = self.redis.get(f"{self._tag(user)}:lists")
        return json.loads(raw) if raw is not None else None

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
        for other in self.redis.hkeys(f"{self._tag(user)}:fo"):  # the edges others drew to them
            n += int(self.redis.hdel(f"{self._tag(other.decode())}:fr", user))
        for other in self.redis.hkeys(f"{self._tag(user)}:fr"):
            n += int(self.redis.hdel(f"{self._tag(other.decode())}:fo", user))
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


