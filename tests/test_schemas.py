"""Contracts: Avro round trips (hypothesis), committed schemas, evolution, bad input reasons."""

from __future__ import annotations

import copy
import io
import json
import uuid
from datetime import UTC, datetime

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from schemas import avro
from schemas.events import (
    ARTIST_KINDS,
    FRIEND_KINDS,
    TRACK_KINDS,
    Context,
    DeadLetter,
    EventBatch,
    GamificationEvent,
    Interaction,
    Kind,
    Recommendation,
    SlateItem,
)
from schemas.wire import Serde, decode_events

SERDE = Serde()
text = st.text(min_size=1, max_size=20)
times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)).map(
    lambda d: d.replace(microsecond=d.microsecond)  # Avro keeps microseconds
)
contexts = st.builds(Context, local_hour=st.none() | st.integers(0, 23), weekday=st.none() | st.integers(0, 6),
                     timezone=st.sampled_from(["UTC", "Europe/Berlin"]), country=st.none() | st.text(max_size=8),
                     cohort=st.none() | text)


@st.composite
def interactions(draw: st.DrawFn) -> Interaction:
    kind = draw(st.sampled_from(list(Kind)))
    needs_track = kind in TRACK_KINDS or kind in ARTIST_KINDS
    user = draw(text)
    return Interaction(
        event_id=draw(st.uuids()), user_id=user, session_id=draw(text), occurred_at=draw(times),
        kind=kind, track_id=draw(text) if needs_track else draw(st.none() | text),
        rec_id=draw(st.none() | st.uuids()), position=draw(st.none() | st.integers(0, 50)),
        listened_ms=draw(st.none() | st.integers(0, 10**7)),
        rating=draw(st.floats(0, 5)) if kind == Kind.RATING else None,
        slate_size=draw(st.none() | st.integers(1, 100)), context=draw(contexts),
        friend_id=draw(text) if kind in FRIEND_KINDS else draw(st.none() | text),
    )


items = st.builds(SlateItem, track_id=text, position=st.integers(0, 100), score=st.floats(-1e6, 1e6),
                  propensity=st.floats(0, 1), source=text, explanation=st.text(max_size=80))
recommendations = st.builds(Recommendation, rec_id=st.uuids(), request_id=st.uuids(), user_id=text,
                            session_id=text, items=st.lists(items, max_size=12), slate_propensity=st.floats(0, 1),
                            policy_id=text, policy_version=text, experiment_arm=st.none() | text,
                            context=contexts, created_at=times)
gamification = st.builds(GamificationEvent, event_id=st.uuids(), user_id=text, karma_delta=st.integers(-10**6, 10**6),
                         karma_total=st.integers(-10**9, 10**9), created_at=times)
dead_letters = st.builds(DeadLetter, topic=text, partition=st.integers(0, 100), offset=st.integers(0, 2**40),
                         step=text, reason=text, error=st.text(max_size=100), index=st.none() | st.integers(0, 999),
                         key=st.none() | st.binary(max_size=20), raw=st.binary(max_size=200), received_at=times)
ANY_RECORD = st.one_of(interactions(), st.builds(EventBatch, events=st.lists(interactions(), min_size=1, max_size=5)),
                       recommendations, gamification, dead_letters)


@settings(max_examples=300, deadline=None)
@given(ANY_RECORD)
def test_avro_round_trip_is_identity(record: BaseModel) -> None:
    data = SERDE.encode(record)
    assert data[0] == 0  # Confluent magic byte, then the schema id
    assert SERDE.decode_any(data) == record


@settings(max_examples=200, deadline=None)
@given(interactions())
def test_json_round_trip_on_the_events_topic(event: Interaction) -> None:
    decoded = decode_events(event.model_dump_json().encode(), SERDE, max_bytes=10**6, max_events=10)
    assert decoded.rejected == []
    assert decoded.events == [event]


def test_committed_avro_schemas_match_the_pydantic_models() -> None:
    assert avro.drift() == {}, "run `python -m schemas.avro` and commit schemas/avro/"


def test_every_committed_schema_parses_and_ids_are_unique() -> None:
    ids = avro.load_ids()
    assert len(ids) >= 5
    assert len({(e["name"], e["version"]) for e in ids.values()}) == len(ids)
    for entry in ids.values():
        fastavro.parse_schema(json.loads((avro.AVRO_DIR / entry["file"]).read_text()))


def _evolved_interaction_schema() -> dict:
    """Interaction as a future writer might send it: one new optional field, one new device."""
    schema = copy.deepcopy(avro.generate(Interaction))
    schema["fields"].append({"name": "mood", "type": ["null", "string"], "default": None})
    for field in schema["fields"]:
        if field["name"] == "context":
            device = next(f for f in field["type"]["fields"] if f["name"] == "device")
            device["type"]["symbols"].append("hologram")
    return schema


def _record() -> Interaction:
    return Interaction(event_id=uuid.uuid4(), user_id="u-1", session_id="s-1", occurred_at=datetime.now(UTC),
                       kind=Kind.LIKE, track_id="t-00001", context=Context(device="mobile", activity="study"))


def test_old_reader_reads_new_writer() -> None:
    new = fastavro.parse_schema(_evolved_interaction_schema())
    old = fastavro.parse_schema(avro.generate(Interaction))
    record = _record().model_dump(mode="python") | {"mood": "happy"}
    record["context"] = dict(record["context"], device="hologram")
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, new, record)
    buf.seek(0)
    read = fastavro.schemaless_reader(buf, new, old)
    event = Interaction.model_validate(read)
    assert event.context.device == "unknown"  # unknown enum symbol -> the enum's default
    assert event.track_id == "t-00001"
    assert "mood" not in read


def test_new_reader_reads_old_writer() -> None:
    new = fastavro.parse_schema(_evolved_interaction_schema())
    old = fastavro.parse_schema(avro.generate(Interaction))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, old, _record().model_dump(mode="python"))
    buf.seek(0)
    read = fastavro.schemaless_reader(buf, old, new)
    assert read["mood"] is None and read["kind"] == "like"


def _reasons(value: bytes, max_bytes: int = 10_000) -> list[str]:
    return [r.reason for r in decode_events(value, SERDE, max_bytes=max_bytes, max_events=100).rejected]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b'{"event_id": ', "bad_json"),
        (b"\xff\xfe not utf8", "bad_json"),
        (json.dumps({"user_id": 42, "kind": "no_such_kind"}).encode(), "unknown_kind"),
        (json.dumps({"user_id": "u", "kind": "like"}).encode(), "missing_field"),
        (json.dumps({"event_id": str(uuid.uuid4()), "user_id": "u", "session_id": "s",
                     "occurred_at": "yesterday", "kind": "like", "track_id": "t"}).encode(), "wrong_type"),
        (json.dumps({"event_id": str(uuid.uuid4()), "user_id": "u", "session_id": "s",
                     "occurred_at": "2026-01-01T00:00:00Z", "kind": "like"}).encode(), "invalid_value"),
        (b"42", "wrong_type"),
        (b"[]", "wrong_type"),
        (json.dumps({"kind": "like", "events": []}).encode(), "wrong_type"),  # an event or a batch, not both
        (b"", "empty"),
        (b"\x00\x00", "bad_framing"),
        (b"\x00\x00\x00\x03\xe7garbage", "unknown_schema_id"),
        (b"\x00\x00\x00\x00\x01\xff\xff", "bad_avro"),
        (b"x" * 20_000, "oversized"),
    ],
)
def test_bad_input_gets_a_reason(value: bytes, reason: str) -> None:
    assert _reasons(value) == [reason]


def test_wrong_schema_on_the_events_topic_is_refused() -> None:
    rec = Recommendation(rec_id=uuid.uuid4(), request_id=uuid.uuid4(), user_id="u", session_id="s", items=[],
                         slate_propensity=1.0, policy_id="p", policy_version="1", created_at=datetime.now(UTC))
    assert _reasons(SERDE.encode(rec)) == ["wrong_schema"]


def test_a_bad_event_inside_a_batch_does_not_lose_its_neighbours() -> None:
    good1, good2 = _record(), _record()
    batch = [json.loads(good1.model_dump_json()), {"kind": "like"}, json.loads(good2.model_dump_json())]
    decoded = decode_events(json.dumps({"events": batch}).encode(), SERDE, max_bytes=10**6, max_events=10)
    assert decoded.events == [good1, good2]
    assert [(r.reason, r.index) for r in decoded.rejected] == [("missing_field", 1)]
    assert json.loads(decoded.rejected[0].raw) == {"kind": "like"}


def test_batch_record_limit() -> None:
    events = [json.loads(_record().model_dump_json()) for _ in range(5)]
    decoded = decode_events(json.dumps(events).encode(), SERDE, max_bytes=10**6, max_events=4)
    assert [r.reason for r in decoded.rejected] == ["batch_too_large"] and decoded.events == []


@pytest.mark.parametrize(("patch", "reason"), [
    ({"occurred_at": 0}, "wrong_type"),  # a unix number: which clock? refused with a hint
    ({"occurred_at": "0156-07-06T09:53:46-12:11"}, "invalid_value"),  # no store keeps year 156
    ({"occurred_at": "2100-01-01T00:00:00Z"}, "invalid_value"),
    ({"user_id": "\udafd"}, "invalid_value"),  # a lone surrogate cannot reach Redis / ClickHouse
    ({"position": True}, "wrong_type"),
    ({"position": "3"}, "wrong_type"),
    ({"listened_ms": 2**40}, "invalid_value"),  # beyond what the stores hold
])
def test_values_downstream_stores_cannot_hold_are_refused(patch: dict, reason: str) -> None:
    event = json.loads(_record().model_dump_json()) | patch
    assert _reasons(json.dumps(event).encode()) == [reason]


def test_whole_floats_count_as_integers() -> None:
    event = json.loads(_record().model_dump_json()) | {"position": 3.0, "listened_ms": 1000.0}
    decoded = decode_events(json.dumps(event).encode(), SERDE, max_bytes=10**6, max_events=1)
    assert decoded.events[0].position == 3 and decoded.events[0].listened_ms == 1000


def test_context_fields_take_defaults() -> None:
    event = Interaction.model_validate({
        "event_id": "0b9a6c1e-5d2f-4c1a-9a51-3f1e2d4c5b6a", "user_id": "u-42", "session_id": "s-1",
        "occurred_at": "2026-11-24T08:30:00Z", "kind": "rec_request", "context": {"device": "mobile"},
    })
    assert event.context.activity == "unknown" and event.context.timezone == "UTC"
    assert event.occurred_at.tzinfo is not None


# --- the Avro fast path (schemas.wire.fast_interaction) holds to pydantic's verdict -------------
def avro_record(event: Interaction) -> dict:
    """The dict fastavro reads back for this event, as the decoder sees it."""
    name, record = SERDE._read(SERDE.encode(event))
    assert name == "encore.Interaction"
    return record


#: values pydantic refuses (or accepts) at each field: the fast path must never accept more
MUTATIONS = st.sampled_from([
    ("user_id", ""), ("user_id", "x" * 129), ("user_id", "ok\ud800"), ("session_id", ""), ("track_id", ""),
    ("track_id", "t" * 129), ("track_id", None), ("artist_id", "a" * 129), ("playlist_id", "p" * 129),
    ("position", -1), ("position", 1001), ("position", 1000), ("listened_ms", 2**31), ("listened_ms", -5),
    ("track_duration_ms", 2**31 - 1), ("slate_size", 0), ("slate_size", 101), ("rating", 5.5), ("rating", None),
    ("rating", float("nan")), ("kind", "no_such_kind"), ("kind", "rating"), ("kind", "follow_artist"),
    ("occurred_at", datetime(1999, 12, 31, tzinfo=UTC)), ("occurred_at", datetime(2100, 1, 1, tzinfo=UTC)),
    ("occurred_at", datetime(2026, 1, 1)), ("event_id", "not-a-uuid"), ("rec_id", "nope"),
    ("context.local_hour", 24), ("context.weekday", 7), ("context.timezone", "z" * 65), ("context.country", "123456789"),
    ("context.cohort", "c" * 65), ("context.device", "toaster"), ("context.activity", "flying"),
    ("context.network", "5g"), ("extra", 1),
])


@settings(max_examples=400, deadline=None)
@given(interactions(), st.lists(MUTATIONS, max_size=3))
def test_the_avro_fast_path_accepts_only_what_pydantic_accepts_and_builds_the_same_event(
        event: Interaction, mutations: list) -> None:
    from pydantic import ValidationError

    from schemas.wire import fast_interaction

    record = copy.deepcopy(avro_record(event))
    for path, value in mutations:
        target = record["context"] if path.startswith("context.") else record
        target[path.removeprefix("context.")] = value
    fast = fast_interaction(record)
    try:
        slow = Interaction.model_validate(record)
    except ValidationError:
        assert fast is None  # never accepted what the contract refuses
        return
    if fast is not None:
        assert fast == slow and fast.model_dump() == slow.model_dump() and fast.context == slow.context
        assert fast.model_dump_json() == slow.model_dump_json()
    if not mutations:
        assert fast is not None  # an untouched record takes the fast path
