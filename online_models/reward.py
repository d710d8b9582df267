"""From feedback to reward, and joining rewards to the decision that caused them.

Reward mapping (documented in README "Rewards"): each feedback kind on a recommended track adds
to that item's reward; the sum is clipped to ``[clip_low, clip_high]``.

======================  =======  ============================================
feedback                default  why
======================  =======  ============================================
skip before 30 s         -0.5    the listener rejected it
skip after 30 s          -0.1    heard some, moved on: mildly negative
play_end (completion)    +1.0    the main success signal
like                     +1.0    explicit taste
replay                   +0.5
playlist_add             +1.0
thumbs_up                +0.5
thumbs_down              -1.0    strongly negative
no feedback by deadline   0.0    ``default`` (only for items the listener reached, see below)
======================  =======  ============================================

The join (:class:`RewardJoin`) keeps open decisions by ``rec_id``. Feedback carrying a rec_id
adds to its item; a decision closes ``window_s`` after it was made (event time: the highest
``occurred_at`` seen so far is the watermark) and then yields one reward per item. Items below
the deepest position that got any feedback are treated as not seen (the cascade assumption)
and yield nothing; items above it with no feedback get ``default``. Feedback that arrives
before its decision (out of order) waits up to ``window_s`` for it; feedback for a closed
decision is counted as late and dropped; a repeated event_id is counted as a duplicate.
Pure: no clock, no I/O; time comes in as arguments.
"""

from __future__ import annotations

import pickle
import tomllib
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

EARLY_SKIP_MS = 30_000


@dataclass(frozen=True)
class RewardMapping:
    early_skip: float = -0.5
    late_skip: float = -0.1
    completion: float = 1.0
    like: float = 1.0
    replay: float = 0.5
    playlist_add: float = 1.0
    thumbs_up: float = 0.5
    thumbs_down: float = -1.0
    default: float = 0.0
    clip_low: float = -1.0
    clip_high: float = 2.0
    early_skip_ms: int = EARLY_SKIP_MS

    def __post_init__(self) -> None:
        if self.clip_low > self.clip_high:
            raise ValueError(f"clip_low {self.clip_low} > clip_high {self.clip_high}")
        if self.early_skip_ms < 0:
            raise ValueError("early_skip_ms must be >= 0")

    @classmethod
    def from_toml(cls, path: Path) -> RewardMapping:
        if not path.exists():
            raise FileNotFoundError(f"reward mapping {path} not found; set ENCORE_REWARDS_FILE to a TOML file "
                                    "(see deploy/config/rewards.toml)")
        with path.open("rb") as f:
            return cls.from_dict(tomllib.load(f))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RewardMapping:
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown reward keys {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**values)

    def of(self, kind: str, listened_ms: int | None = None) -> float | None:
        """The reward one feedback event adds, or None when the kind is not feedback."""
        if kind == "skip":
            early = listened_ms is None or listened_ms < self.early_skip_ms
            return self.early_skip if early else self.late_skip
        return {
            "play_end": self.completion, "like": self.like, "replay": self.replay,
            "playlist_add": self.playlist_add, "thumbs_up": self.thumbs_up, "thumbs_down": self.thumbs_down,
        }.get(kind)

    def clip(self, total: float) -> float:
        return min(self.clip_high, max(self.clip_low, total))


@dataclass
class Decision:
    """What a slate decided, kept until its rewards are known. ``payload`` is whatever the
    policy needs to learn from (features per item, session state)."""

    rec_id: uuid.UUID
    user_id: str
    made_at: datetime
    track_ids: tuple[str, ...]
    policy_id: str
    payload: Any = None
    totals: dict[int, float] = field(default_factory=dict)  # position -> summed reward
    deepest: int = -1
    n_feedback: int = 0


@dataclass(frozen=True)
class Feedback:
    event_id: uuid.UUID
    rec_id: uuid.UUID
    track_id: str
    kind: str
    occurred_at: datetime
    listened_ms: int | None = None
    position: int | None = None


@dataclass(frozen=True)
class Closed:
    decision: Decision
    rewards: tuple[float | None, ...]  # per position; None = not seen (no learning)


@dataclass
class JoinStats:
    decisions: int = 0
    feedback: int = 0
    duplicates: int = 0
    late: int = 0
    early: int = 0  # arrived before its decision
    orphaned: int = 0  # waited for a decision that never came
    unmatched_track: int = 0
    closed: int = 0


class RewardJoin:
    def __init__(self, mapping: RewardMapping | None = None, *, window_s: float = 300.0,
                 remember_ids: int = 1_000_000, remember_closed: int = 200_000) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.mapping = mapping or RewardMapping()
        self.window = timedelta(seconds=window_s)
        self.open: OrderedDict[uuid.UUID, Decision] = OrderedDict()
        self.waiting: dict[uuid.UUID, list[Feedback]] = {}
        self._waiting_since: OrderedDict[uuid.UUID, datetime] = OrderedDict()
        self._seen: OrderedDict[uuid.UUID, None] = OrderedDict()
        self._closed: OrderedDict[uuid.UUID, None] = OrderedDict()
        self._remember_ids, self._remember_closed = remember_ids, remember_closed
        self.watermark: datetime | None = None
        self.stats = JoinStats()

    def _advance(self, t: datetime) -> None:
        if self.watermark is None or t > self.watermark:
            self.watermark = t

    def decide(self, decision: Decision) -> None:
        """Open a decision (idempotent by rec_id) and apply feedback that arrived before it."""
        if decision.rec_id in self.open or decision.rec_id in self._closed:
            return
        self.stats.decisions += 1
        self.open[decision.rec_id] = decision
        self._advance(decision.made_at)
        for fb in self.waiting.pop(decision.rec_id, []):
            self._apply(decision, fb)
        self._waiting_since.pop(decision.rec_id, None)

    def feedback(self, fb: Feedback) -> bool:
        """Add one feedback event; False if it was a duplicate, late or not feedback."""
        if self.mapping.of(fb.kind, fb.listened_ms) is None:
            return False
        if fb.event_id in self._seen:
            self.stats.duplicates += 1
            return False
        self._seen[fb.event_id] = None
        if len(self._seen) > self._remember_ids:
            self._seen.popitem(last=False)
        self._advance(fb.occurred_at)
        if fb.rec_id in self._closed:
            self.stats.late += 1
            return False
        decision = self.open.get(fb.rec_id)
        if decision is None:
            self.stats.early += 1
            self.waiting.setdefault(fb.rec_id, []).append(fb)
            self._waiting_since.setdefault(fb.rec_id, fb.occurred_at)
            return True
        return self._apply(decision, fb)

    def _apply(self, decision: Decision, fb: Feedback) -> bool:
        pos = fb.position
        if pos is None or not 0 <= pos < len(decision.track_ids) or decision.track_ids[pos] != fb.track_id:
            pos = decision.track_ids.index(fb.track_id) if fb.track_id in decision.track_ids else None
        if pos is None:
            self.stats.unmatched_track += 1
            return False
        self.stats.feedback += 1
        decision.totals[pos] = decision.totals.get(pos, 0.0) + float(self.mapping.of(fb.kind, fb.listened_ms) or 0.0)
        decision.deepest = max(decision.deepest, pos)
        decision.n_feedback += 1
        return True

    def close_due(self, now: datetime | None = None, *, all_open: bool = False) -> list[Closed]:
        """Close decisions older than the window (relative to ``now`` or the watermark)."""
        now = now or self.watermark
        out: list[Closed] = []
        if now is None:
            return out
        while self.open:
            rec_id, decision = next(iter(self.open.items()))
            if not all_open and decision.made_at + self.window > now:
                break
            self.open.popitem(last=False)
            self._closed[rec_id] = None
            if len(self._closed) > self._remember_closed:
                self._closed.popitem(last=False)
            rewards = tuple(
                self.mapping.clip(decision.totals.get(p, self.mapping.default)) if p <= decision.deepest else None
                for p in range(len(decision.track_ids))
            )
            self.stats.closed += 1
            out.append(Closed(decision, rewards))
        while self._waiting_since:
            rec_id, since = next(iter(self._waiting_since.items()))
            if not all_open and since + self.window > now:
                break
            self._waiting_since.popitem(last=False)
            self.stats.orphaned += len(self.waiting.pop(rec_id, []))
        return out

    def snapshot(self) -> bytes:
        return pickle.dumps(self.__dict__)

    def restore(self, blob: bytes) -> None:
        self.__dict__.update(pickle.loads(blob))
