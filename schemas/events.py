"""Event contracts. pydantic is the source of truth; Avro schemas are generated from these.

Every record on ``encore.events`` is either one :class:`Interaction` or an :class:`EventBatch`
of one listener's interactions. Outputs are :class:`Recommendation`,
:class:`GamificationEvent` and :class:`DeadLetter`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAMESPACE = "encore"


class Kind(StrEnum):
    PLAY_START = "play_start"
    PLAY_END = "play_end"
    SKIP = "skip"
    LIKE = "like"
    DISLIKE = "dislike"
    REPLAY = "replay"
    PLAYLIST_ADD = "playlist_add"
    SHARE = "share"
    FOLLOW_ARTIST = "follow_artist"
    THUMBS_UP = "thumbs_up"
    THUMBS_DOWN = "thumbs_down"
    RATING = "rating"
    REC_REQUEST = "rec_request"


#: kinds that are about one track and so must carry ``track_id``
TRACK_KINDS = frozenset(Kind) - {Kind.REC_REQUEST, Kind.FOLLOW_ARTIST}


class Device(StrEnum):
    UNKNOWN = "unknown"
    MOBILE = "mobile"
    DESKTOP = "desktop"
    WEB = "web"
    SMART_SPEAKER = "smart_speaker"
    CAR = "car"
    TV = "tv"
    WEARABLE = "wearable"


class Activity(StrEnum):
    UNKNOWN = "unknown"
    WORKOUT = "workout"
    COMMUTE = "commute"
    STUDY = "study"
    RELAX = "relax"
    SLEEP = "sleep"
    PARTY = "party"
    WORK = "work"


class Network(StrEnum):
    UNKNOWN = "unknown"
    WIFI = "wifi"
    CELLULAR = "cellular"
    OFFLINE = "offline"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _utc(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC; aware ones are converted to UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class _Input(BaseModel):
    # Inputs ignore fields they do not know, so a newer client can talk to an older worker.
    model_config = ConfigDict(frozen=True, extra="ignore")


class Context(_Input):
    """Where and how the listener is. Every field has a default so clients send what they know."""

    device: Device = Device.UNKNOWN
    activity: Activity = Activity.UNKNOWN
    local_hour: int | None = Field(None, ge=0, le=23, description="listener's local hour")
    weekday: int | None = Field(None, ge=0, le=6, description="0 = Monday, local")
    timezone: str = Field("UTC", max_length=64, description="IANA zone of the listener")
    network: Network = Network.UNKNOWN
    country: str | None = Field(None, max_length=8)
    cohort: str | None = Field(None, max_length=64, description="friends / cohort board id")


class Interaction(_Input):
    """One thing a listener did. ``event_id`` is the idempotency key of every side effect."""

    event_id: UUID
    user_id: str = Field(min_length=1, max_length=128)
    session_id: str = Field(min_length=1, max_length=128)
    occurred_at: datetime = Field(description="client clock, stored as UTC")
    kind: Kind
    track_id: str | None = Field(None, min_length=1, max_length=128)
    artist_id: str | None = Field(None, max_length=128)
    rec_id: UUID | None = Field(None, description="the slate this event answers")
    position: int | None = Field(None, ge=0, le=1000, description="slot in that slate")
    listened_ms: int | None = Field(None, ge=0)
    track_duration_ms: int | None = Field(None, ge=0)
    rating: float | None = Field(None, ge=0, le=5)
    playlist_id: str | None = Field(None, max_length=128)
    slate_size: int | None = Field(None, ge=1, le=100, description="rec_request only")
    context: Context = Field(default_factory=Context)

    @field_validator("occurred_at")
    @classmethod
    def _occurred_utc(cls, value: datetime) -> datetime:
        return _utc(value)

    def local_time(self) -> datetime:
        """``occurred_at`` in the listener's time zone (UTC when the zone is unknown)."""
        try:
            return self.occurred_at.astimezone(ZoneInfo(self.context.timezone))
        except (ZoneInfoNotFoundError, ValueError):
            return self.occurred_at

    @model_validator(mode="after")
    def _kind_rules(self) -> Interaction:
        if self.kind in TRACK_KINDS and self.track_id is None:
            raise ValueError(f"kind '{self.kind}' needs track_id")
        if self.kind == Kind.FOLLOW_ARTIST and self.artist_id is None and self.track_id is None:
            raise ValueError("kind 'follow_artist' needs artist_id or track_id")
        if self.kind == Kind.RATING and self.rating is None:
            raise ValueError("kind 'rating' needs rating (0..5)")
        return self


class EventBatch(_Input):
    """Several interactions of one listener in one record (what analytics SDKs send)."""

    events: list[Interaction] = Field(min_length=1)


class SlateItem(_Model):
    track_id: str
    position: int = Field(ge=0)
    score: float
    propensity: float = Field(
        ge=0,
        le=1,
        description="probability the policy had of putting this track in this position, "
        "given the tracks it had already placed above it",
    )
    source: str = Field(description="candidate source, e.g. popularity:context")
    explanation: str


class Recommendation(_Model):
    rec_id: UUID
    request_id: UUID = Field(description="event_id of the rec_request this slate answers")
    user_id: str
    session_id: str
    items: list[SlateItem]
    slate_propensity: float = Field(ge=0, le=1, description="probability of the whole ranking")
    policy_id: str
    policy_version: str
    experiment_arm: str | None = None
    context: Context = Field(default_factory=Context)
    created_at: datetime

    @field_validator("created_at")
    @classmethod
    def _created_at_utc(cls, value: datetime) -> datetime:
        return _utc(value)


class GamificationEvent(_Model):
    event_id: UUID = Field(description="the interaction that caused it")
    user_id: str
    karma_delta: int
    karma_total: int
    tier: str | None = None
    achievement_unlocked: str | None = None
    avatar_unlocked: str | None = None
    board: str | None = None
    old_rank: int | None = None
    new_rank: int | None = None
    created_at: datetime

    @field_validator("created_at")
    @classmethod
    def _created_utc(cls, value: datetime) -> datetime:
        return _utc(value)


class DeadLetter(_Model):
    """A record that could not be processed, with why, and its raw bytes for replay."""

    topic: str
    partition: int
    offset: int
    step: str = Field(description="the step that refused it, e.g. ingest.decode")
    reason: str = Field(description="short machine code: bad_json, unknown_kind, ...")
    error: str = Field(description="human message saying what is wrong")
    index: int | None = Field(None, description="position inside a batch record")
    key: bytes | None = None
    raw: bytes
    received_at: datetime

    @field_validator("received_at")
    @classmethod
    def _received_at_utc(cls, value: datetime) -> datetime:
        return _utc(value)


#: every record type that goes on the wire, by Avro full name
RECORDS: dict[str, type[BaseModel]] = {
    f"{NAMESPACE}.{cls.__name__}": cls
    for cls in (Interaction, EventBatch, Recommendation, GamificationEvent, DeadLetter)
}
