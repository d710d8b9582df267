"""Step ``gamify``: turn an interaction into the karma / stats effect the Redis script applies.

Pure. The rules come from a TOML file (``deploy/config/gamification.toml``); everything that
depends on a listener's history (is this artist new to them? does this day extend a streak?)
is decided atomically inside Redis by ``sinks/gamification.py``. Every rule there is
order-independent, so the same events in any order or split give the same state.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from online_models.catalogue import Catalogue
from schemas.events import Interaction, Kind

STEP = "gamify"
DAY_MS = 86_400_000
STATS = (
    "listens", "likes", "skips", "replays", "shares", "playlist_adds", "playlists", "ratings",
    "thumbs", "follows", "new_artists", "genres", "night_listens", "best_streak", "karma",
)
KARMA_KEYS = (
    "listen", "like", "replay", "share", "playlist_add", "playlist_create", "rating",
    "follow_artist", "new_artist", "thumbs", "streak_bonus", "skip_penalty", "floor",
)


@dataclass(frozen=True)
class Achievement:
    id: str
    title: str
    stat: str
    target: int
    avatar: str | None = None


@dataclass(frozen=True)
class Challenge:
    id: str
    title: str
    stat: str
    target: int
    start: datetime
    end: datetime


@dataclass(frozen=True)
class Tier:
    name: str
    min_karma: int
    avatar: str


@dataclass(frozen=True)
class Rules:
    karma: dict[str, int]
    grace_days: int = 1
    horizon_days: float = 7.0
    night: tuple[int, int] = (0, 4)
    achievements: tuple[Achievement, ...] = ()
    challenges: tuple[Challenge, ...] = ()
    tiers: tuple[Tier, ...] = ()
    lua_args: str = field(default="", compare=False)

    @cached_property
    def challenge_windows(self) -> dict[str, tuple[str, int, int]]:
        """challenge id -> (stat, start ms, end ms)."""
        return {c.id: (c.stat, int(c.start.timestamp() * 1000), int(c.end.timestamp() * 1000))
                for c in self.challenges}

    def __post_init__(self) -> None:
        missing = set(KARMA_KEYS) - set(self.karma)
        if missing:
            raise ValueError(f"[karma] lacks {sorted(missing)}; every weight must be set (0 turns it off)")
        for a in (*self.achievements, *self.challenges):
            if a.stat not in STATS:
                raise ValueError(f"{a.id}: unknown stat {a.stat!r}; use one of {', '.join(STATS)}")
            if a.target < 1:
                raise ValueError(f"{a.id}: target must be >= 1")
        if self.grace_days < 0 or self.horizon_days <= 0:
            raise ValueError("grace_days must be >= 0 and horizon_days > 0")
        if sorted(t.min_karma for t in self.tiers) != [t.min_karma for t in self.tiers]:
            raise ValueError("tiers must be listed by increasing min_karma")
        # what the Lua script needs, encoded once
        object.__setattr__(self, "lua_args", json.dumps({
            "floor": self.karma["floor"],
            "streak_bonus": self.karma["streak_bonus"],
            "link_gap": 1 + self.grace_days,
            "horizon_ms": int(self.horizon_days * DAY_MS),
            "achievements": [[a.id, a.stat, a.target, a.avatar or ""] for a in self.achievements]
            + [[f"challenge:{c.id}", f"ch:{c.id}", c.target, ""] for c in self.challenges],
            "tiers": [[t.name, t.min_karma, t.avatar] for t in self.tiers],
            "challenges": {
                c.id: [c.stat, int(c.start.timestamp() * 1000), int(c.end.timestamp() * 1000)]
                for c in self.challenges
            } or {"_": ["", 0, 0]},
        }))

    @classmethod
    def from_toml(cls, path: Path) -> Rules:
        try:
            doc = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"gamification rules {path} not found; set ENCORE_GAMIFICATION_RULES") from None
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Rules:
        night = doc.get("night", {})
        return cls(
            karma={k: int(v) for k, v in doc["karma"].items()},
            grace_days=int(doc.get("streaks", {}).get("grace_days", 1)),
            horizon_days=float(doc.get("dedupe", {}).get("horizon_days", 7)),
            night=(int(night.get("start_hour", 0)), int(night.get("end_hour", 4))),
            achievements=tuple(Achievement(**a) for a in doc.get("achievements", [])),
            challenges=tuple(Challenge(**c) for c in doc.get("challenges", [])),
            tiers=tuple(Tier(**t) for t in doc.get("tiers", [])),
        )


@dataclass(frozen=True)
class Effect:
    """What one event does, before the listener's history is consulted.

    ``sets`` are (set, member, stat, karma): if the member is new to the listener's set, the
    stat is incremented and the karma added (new artist, new genre, new playlist).
    """

    event_id: str
    user_id: str
    at_ms: int
    day: int  # the listener's local day (proleptic ordinal; Monday of week w is 7w + 1)
    karma: int
    incr: dict[str, int]
    sets: tuple[tuple[str, str, str, int], ...] = ()
    listening_day: bool = False  # counts toward streaks
    genre: str | None = None
    cohort: str | None = None
    id_bytes: bytes = b""  # the event id's 16 bytes (the dedupe mark in Redis)


def week_of(at: datetime) -> int:
    """Monday-based week number of a UTC time (the weekly boards' key)."""
    return (at.astimezone(UTC).date().toordinal() - 1) // 7


def effect_for(event: Interaction, rules: Rules, catalogue: Catalogue | None = None, *,
               artist: str | None = None, genre: str | None = None, local: datetime | None = None) -> Effect | None:
    """The effect of one interaction, or None when no rule gives it any (rec_request, play_start).

    The worker passes what it already looked up about the event (``artist``, ``genre`` and the
    listener's ``local`` time); otherwise they come from ``catalogue``."""
    w = rules.karma
    kind = event.kind
    if kind in (Kind.REC_REQUEST, Kind.PLAY_START, Kind.DISLIKE):
        return None
    if local is None:
        idx = catalogue.index.get(event.track_id or "") if catalogue is not None else None
        artist = event.artist_id or (catalogue.artist_ids[idx] if catalogue is not None and idx is not None else None)
        genre = catalogue.genre_of(idx) if catalogue is not None and idx is not None else None
        local = event.local_time()
    artist, genre = artist or None, genre or None
    incr: dict[str, int] = {}
    sets: list[tuple[str, str, str, int]] = []
    karma = 0
    listening_day = False

    def discovery() -> None:
        if artist:
            sets.append(("artists", artist, "new_artists", w["new_artist"]))
        if genre:
            sets.append(("genres", genre, "genres", 0))

    if kind == Kind.PLAY_END:
        karma, incr["listens"], listening_day = w["listen"], 1, True
        start, end = rules.night
        if start <= local.hour <= end:
            incr["night_listens"] = 1
        discovery()
    elif kind == Kind.SKIP:
        karma, incr["skips"] = -w["skip_penalty"], 1
    elif kind == Kind.LIKE:
        karma, incr["likes"] = w["like"], 1
        discovery()
    elif kind == Kind.REPLAY:
        karma, incr["replays"] = w["replay"], 1
    elif kind == Kind.SHARE:
        karma, incr["shares"] = w["share"], 1
    elif kind == Kind.PLAYLIST_ADD:
        karma, incr["playlist_adds"] = w["playlist_add"], 1
        sets.append(("playlists", event.playlist_id or "default", "playlists", w["playlist_create"]))
    elif kind == Kind.RATING:
        karma, incr["ratings"] = w["rating"], 1
    elif kind == Kind.FOLLOW_ARTIST:
        karma, incr["follows"] = w["follow_artist"], 1
    elif kind in (Kind.THUMBS_UP, Kind.THUMBS_DOWN):
        karma, incr["thumbs"] = (w["thumbs"] if event.rec_id is not None else 0), 1
    else:  # rec_request, play_start, dislike: nothing to award
        return None
    at = event.occurred_at
    return Effect(
        event_id=str(event.event_id), user_id=event.user_id, at_ms=int(at.timestamp() * 1000),
        day=local.date().toordinal(), karma=karma, incr=incr, sets=tuple(sets),
        listening_day=listening_day, genre=genre, cohort=event.context.cohort,
        id_bytes=event.event_id.bytes,
    )
