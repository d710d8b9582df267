"""Hostile input never costs a good event: random and mutated records go through the worker's
pure step beside good ones; every bad record becomes a dead letter with a reason, every good
event is processed, nothing raises. (The long run with the real broker is in test-faults.)"""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.batch import BatchState, process_batch
from agents.gamify import Rules
from agents.ingest import RawRecord
from agents.recommend import Recommender
from online_models.policy import make_policy
from schemas.events import Interaction, Kind
from schemas.wire import Serde, encode_batch
from streams.settings import Settings
from streams.simulator import synthetic_catalogue

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
CAT = synthetic_catalogue(7, 200)
SERDE = Serde()
STATE = BatchState(SERDE, CAT, Recommender(CAT, make_policy("linucb", CAT, n_candidates=30), slate_size=5,
                                           dedupe_window=100_000),
                   Rules.from_toml(Settings().gamification_rules), True, max_record_bytes=65_536, max_batch_events=50)

#: the cases the faults issue found, and their kin
NASTY = [
    b"[" * 50_000 + b"]" * 50_000,  # RecursionError in json.loads
    b'{"n": ' + b"9" * 5000 + b"}",  # ValueError: int longer than Python reads
    b"\xff\xfe\xfd", b"\x00", b"\x00\x00\x00\x00\x63" + b"\x01" * 20,  # invalid UTF-8, bad framing, unknown schema
    b"\x00\x00\x00\x00\x03" + b"\x00" * 8,  # a Recommendation's schema id on the events topic
    b"x" * 70_000,  # oversized
    b"[]", b"{}", b"null", b"1e999", b'"text"', b'{"events": []}', b'{"events": 5}',
    json.dumps([{"kind": "play_end"}] * 60).encode(),  # too many events in one record
]


def good(i: int) -> tuple[bytes, list[Interaction]]:
    events = [Interaction(event_id=uuid.uuid4(), user_id=f"u{i % 7}", session_id="s", kind=k,
                          occurred_at=NOW - timedelta(minutes=i), track_id=None if k == Kind.REC_REQUEST else CAT.track_ids[i % 50])
              for k in (Kind.PLAY_START, Kind.PLAY_END, Kind.REC_REQUEST)]
    if i % 2:
        return encode_batch(events, SERDE), events
    return json.dumps([json.loads(e.model_dump_json()) for e in events]).encode(), events


def mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        if op < 0.4 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op < 0.6 and b:
            del b[rng.randrange(len(b)):rng.randrange(len(b) + 1)]
        elif op < 0.8:
            b[rng.randrange(len(b) + 1):0] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            b = b[:rng.randrange(len(b) + 1)]
    return bytes(b)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.one_of(st.sampled_from(NASTY), st.binary(max_size=300), st.integers(0, 10**6)),
                min_size=1, max_size=25), st.integers(0, 2**32))
def test_bad_records_are_dead_lettered_and_good_neighbours_processed(items: list, seed: int) -> None:
    rng = random.Random(seed)
    records, wanted, bad_offsets = [], set(), set()
    for offset, item in enumerate(items):
        if isinstance(item, int):  # a good record, or a mutation of one
            value, events = good(item)
            if item % 3 == 0:
                value = mutate(value, rng)
                bad_offsets.add(offset)  # may still decode (then its events count as processed)
            else:
                wanted |= {e.event_id for e in events}
        else:
            value = item
            bad_offsets.add(offset)
        records.append(RawRecord("encore.events", 0, offset, b"k", value))
    out = process_batch(records, STATE, NOW)  # never raises
    got = {e.event_id for e in out.events}
    assert wanted <= got  # every good event processed
    letters = {d.offset for d in out.dead}
    assert letters <= bad_offsets and all(d.reason and d.error for d in out.dead)
    for offset in bad_offsets:  # a bad record is either dead-lettered or yielded valid events only
        assert offset in letters or any(records[i].offset == offset for i in out.origin)
