"""Event contracts. pydantic is the source of truth; Avro schemas are generated from these.

Every record on ``encore.events`` is either one :class:`Interaction` or an :class:`EventBatch`
of one listener's interactions. Outputs are :class:`Recommendation`,
:class:`GamificationEvent` and :class:`DeadLetter`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

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
    FOLLOW_USER = "follow_user"
    UNFOLLOW_USER = "unfollow_user"
    UNFOLLOW_ARTIST = "unfollow_artist"  # new symbols go last: Avro writes an enum by its position


#: kinds that are about one track and so must carry ``track_id``
TRACK_KINDS = frozenset(Kind) - {Kind.REC_REQUEST, Kind.FOLLOW_ARTIST, Kind.UNFOLLOW_ARTIST, Kind.FOLLOW_USER,
                                 Kind.UNFOLLOW_USER}
#: kinds about an artist, which must carry ``artist_id`` or a ``track_id`` of theirs
ARTIST_KINDS = frozenset({Kind.FOLLOW_ARTIST, Kind.UNFOLLOW_ARTIST})
#: kinds about another listener (a friend edge), which must carry ``friend_id``
FRIEND_KINDS = frozenset({Kind.FOLLOW_USER, Kind.UNFOLLOW_USER})


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


def _whole(value: Any) -> Any:
    """Integers, or floats with no fraction (JSON does not tell 3 from 3.0); never booleans."""
    if isinstance(value, bool):
        raise PydanticCustomError("int_type", "expected an integer, got a boolean")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    raise PydanticCustomError("int_type", "expected an integer, got {kind}", {"kind": type(value).__name__})


#: an integer field that does not coerce strings or booleans
WholeInt = Annotated[int, BeforeValidator(_whole)]


def _whole_in(lo: int, hi: int) -> Any:
    """A whole number in [lo, hi]; its JSON schema says so (a plain Field(ge=...) on a type with
    a before-validator leaves pydantic writing 'ge' / 'le', which JSON Schema does not know)."""
    return Annotated[int, BeforeValidator(_whole), Field(ge=lo, le=hi),
                     WithJsonSchema({"type": "integer", "minimum": lo, "maximum": hi})]


def _float_in(lo: float, hi: float) -> Any:
    return Annotated[StrictFloat, Field(ge=lo, le=hi), WithJsonSchema({"type": "number", "minimum": lo, "maximum": hi})]

#: what events may say about when they happened (downstream stores cover these years)
EARLIEST, LATEST = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)


def _text(value: str | None) -> str | None:
    """Text must be valid Unicode (a lone surrogate cannot be stored in Redis or ClickHouse)."""
    if value is not None:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("is not valid Unicode text (lone surrogate)") from None
    return value


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
    local_hour: _whole_in(0, 23) | None = Field(None, description="listener's local hour")
    weekday: _whole_in(0, 6) | None = Field(None, description="0 = Monday, local")
    timezone: str = Field("UTC", max_length=64, description="IANA zone of the listener")
    network: Network = Network.UNKNOWN
    country: str | None = Field(None, max_length=8)
    cohort: str | None = Field(None, max_length=64, description="friends / cohort board id")

    _valid_text = field_validator("timezone", "country", "cohort")(_text)


def _kind_rules_schema(schema: dict[str, Any]) -> None:
    """The rules of ``Interaction._kind_rules`` in JSON Schema, so API clients and generated
    tests see them: track kinds need track_id, rating needs rating, follow_artist an artist."""
    track = {"type": "string", "minLength": 1, "maxLength": 128}
    schema["allOf"] = [
        {"if": {"properties": {"kind": {"enum": sorted(str(k) for k in TRACK_KINDS)}}, "required": ["kind"]},
         "then": {"properties": {"track_id": track}, "required": ["track_id"]}},
        {"if": {"properties": {"kind": {"const": "rating"}}, "required": ["kind"]},
         "then": {"properties": {"rating": {"type": "number", "minimum": 0, "maximum": 5}}, "required": ["rating"]}},
        {"if": {"properties": {"kind": {"enum": sorted(str(k) for k in FRIEND_KINDS)}}, "required": ["kind"]},
         "then": {"properties": {"friend_id": {"type": "string", "minLength": 1, "maxLength": 128}},
                  "required": ["friend_id"]}},
        {"if": {"properties": {"kind": {"enum": sorted(str(k) for k in ARTIST_KINDS)}}, "required": ["kind"]},
         "then": {"anyOf": [{"properties": {"artist_id": {"type": "string"}}, "required": ["artist_id"]},
                            {"properties": {"track_id": track}, "required": ["track_id"]}]}},
    ]


class Interaction(_Input):
    """One thing a listener did. ``event_id`` is the idempotency key of every side effect."""

    model_config = ConfigDict(frozen=True, extra="ignore", json_schema_extra=_kind_rules_schema)

    event_id: UUID
    user_id: str = Field(min_length=1, max_length=128)
    session_id: str = Field(min_length=1, max_length=128)
    occurred_at: datetime = Field(description="client clock, stored as UTC",
                                  json_schema_extra={"pattern": "^20[0-9]{2}-"})  # years 2000-2099
    kind: Kind
    track_id: str | None = Field(None, min_length=1, max_length=128)
    artist_id: str | None = Field(None, max_length=128)
    rec_id: UUID | None = Field(None, description="the slate this event answers")
    position: _whole_in(0, 1000) | None = Field(None, description="slot in that slate")
    listened_ms: _whole_in(0, 2**31 - 1) | None = None
    track_duration_ms: _whole_in(0, 2**31 - 1) | None = None
    rating: _float_in(0, 5) | None = None
    playlist_id: str | None = Field(None, max_length=128)
    friend_id: str | None = Field(None, min_length=1, max_length=128,
                                  description="follow_user / unfollow_user: the listener followed or unfollowed")
    slate_size: _whole_in(1, 100) | None = Field(None, description="rec_request only")
    context: Context = Field(default_factory=Context)

    _valid_text = field_validator("user_id", "session_id", "track_id", "artist_id", "playlist_id", "friend_id")(_text)

    @field_validator("occurred_at", mode="before")
    @classmethod
    def _occurred_is_a_time(cls, value: Any) -> Any:
        if not isinstance(value, str | datetime):  # no unix numbers: say which clock you mean
            raise PydanticCustomError("datetime_type", "must be an ISO 8601 date-time string, e.g. 2026-11-24T08:30:00Z")
        return value

    @field_validator("occurred_at")
    @classmethod
    def _occurred_utc(cls, value: datetime) -> datetime:
        try:
            value = _utc(value)
        except OverflowError:
            raise ValueError("is out of range") from None
        if not EARLIEST <= value < LATEST:
            raise ValueError(f"must fall in the years {EARLIEST.year}-{LATEST.year - 1}")
        return value

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
        if self.kind in ARTIST_KINDS and self.artist_id is None and self.track_id is None:
            raise ValueError(f"kind '{self.kind}' needs artist_id or track_id")
        if self.kind in FRIEND_KINDS and self.friend_id is None:
            raise ValueError(f"kind '{self.kind}' needs friend_id, the listener followed or unfollowed")
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
    why_features: list[str] = Field(
        default_factory=list,
        description="why this track: the features that added or took most from its score, largest first "
        "(exact for the linear policies; 'listener_layer' is the listener's own offset); empty for the DQN",
    )
    why_values: list[float] = Field(default_factory=list, description="each why_features entry's value x weight")


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


class RewardItem(_Model):
    track_id: str
    position: int = Field(ge=0)
    propensity: float = Field(ge=0, le=1)
    source: str
    reward: float | None = Field(description="joined reward; null when the listener never reached it")


class RewardRecord(_Model):
    """A decision with its rewards, once its window closed: logged bandit feedback, enough to
    evaluate any other policy off-line (``python -m online_models.evaluate bandit-feedback``)."""

    rec_id: UUID
    user_id: str
    session_id: str
    policy_id: str
    policy_version: str
    items: list[RewardItem]
    feedback_events: int = Field(ge=0, description="feedback events joined to this decision")
    context: Context = Field(default_factory=Context)
    decided_at: datetime
    closed_at: datetime

    @field_validator("decided_at", "closed_at")
    @classmethod
    def _times_utc(cls, value: datetime) -> datetime:
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
    for cls in (Interaction, EventBatch, Recommendation, GamificationEvent, DeadLetter, RewardRecord)
}
