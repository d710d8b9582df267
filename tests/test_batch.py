"""The worker's pure step, with a list of records in and outputs out: no Faust, no broker."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

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
CAT = synthetic_catalogue(7, 300)
SERDE = Serde()


def state(analytics: bool = True) -> BatchState:
    rec = Recommender(CAT, make_policy("linucb", CAT, n_candidates=50), slate_size=5, dedupe_window=10_000)
    return BatchState(SERDE, CAT, rec, Rules.from_toml(Settings().gamification_rules), analytics)


def event(kind: Kind, user: str = "u-1", **kw: object) -> Interaction:
    track = None if kind == Kind.REC_REQUEST else CAT.track_ids[3]
    return Interaction(event_id=uuid.uuid4(), user_id=user, session_id="s-1", occurred_at=NOW - timedelta(seconds=5),
                       kind=kind, track_id=track, **kw)


def records(*values: bytes) -> list[RawRecord]:
    return [RawRecord("encore.events", 0, i, b"u-1", v) for i, v in enumerate(values)]


def test_a_request_and_feedback_give_a_slate_effects_and_rows() -> None:
    req = event(Kind.REC_REQUEST)
    out = process_batch(records(encode_batch([event(Kind.PLAY_START), event(Kind.PLAY_END), req], SERDE)), state(), NOW)
    assert [s.request_id for s in out.slates] == [req.event_id] and len(out.slates[0].items) == 5
    assert out.dead == [] and len(out.events) == 3 and out.origin == [0, 0, 0]
    assert [e.event_id for e in out.effects] == [str(out.events[1].event_id)]  # only play_end earns karma
    assert len(out.rows["events"]) == 3 and len(out.rows["recommendations"]) == 5
    assert out.offsets() == {0: 1}


def test_poison_records_are_dead_lettered_alone_and_their_neighbours_processed() -> None:
    good = [encode_batch([event(Kind.PLAY_END, user=f"u-{i}")], SERDE) for i in range(3)]
    deep = b"[" * 100_000 + b"]" * 100_000  # json.loads: RecursionError
    huge = b'{"n": ' + b"9" * 5000 + b"}"  # json.loads: ValueError (int longer than 4300 digits)
    out = process_batch(records(good[0], deep, good[1], huge, b"\xff\xfe", good[2]), state(), NOW)
    assert len(out.events) == 3 and {e.user_id for e in out.events} == {"u-0", "u-1", "u-2"}
    assert sorted(d.offset for d in out.dead) == [1, 3, 4]
    assert {d.reason for d in out.dead} == {"bad_json"} and all(d.error for d in out.dead)
    assert out.offsets() == {0: 6}


def test_a_redelivered_batch_gives_the_same_slate_and_no_second_learning() -> None:
    s = state()
    batch = records(encode_batch([event(Kind.REC_REQUEST)], SERDE))
    first = process_batch(batch, s, NOW)
    again = process_batch(batch, s, NOW)  # no store at hand: decided again, the join opens it once
    assert again.duplicates == 1 and again.slates[0].rec_id == first.slates[0].rec_id
    assert list(s.recommender.join.open) == [first.slates[0].rec_id]
    # a fresh worker that meets the same request decides the same slate (same rec_id, same tracks)
    other = process_batch(batch, state(), NOW)
    assert other.slates[0].rec_id == first.slates[0].rec_id
    assert [i.track_id for i in other.slates[0].items] == [i.track_id for i in first.slates[0].items]


def test_a_published_slate_is_served_again_and_its_feedback_joins_the_tracks_seen() -> None:
    s = state()
    req = event(Kind.REC_REQUEST)
    first = process_batch(records(encode_batch([req], SERDE)), s, NOW).slates[0]
    # a restarted worker whose model learned other things, told what was published, serves
    # exactly that, and the listener's feedback joins the tracks they saw
    fresh = state()
    for k in range(30):
        e = event(Kind.PLAY_END, user="u-1").model_copy(update={"track_id": CAT.track_ids[k]})
        process_batch(records(encode_batch([e], SERDE)), fresh, NOW)
    seen = first.items[2].track_id
    play = event(Kind.PLAY_END, rec_id=first.rec_id, position=2).model_copy(update={"track_id": seen})
    ranker = fresh.recommender.policy.ranker
    rows_before = ranker.A_inv.copy()
    out = process_batch(records(encode_batch([req, play], SERDE)), fresh, NOW, known={first.rec_id: first})
    assert out.slates == [first] and fresh.recommender.adopted == 1
    (reward,) = fresh.recommender.close(NOW + timedelta(hours=1), all_open=True).records
    assert [i.track_id for i in reward.items] == [i.track_id for i in first.items]
    assert reward.items[2].reward is not None and reward.items[2].reward > 0
    assert (ranker.A_inv == rows_before).all()  # the model did not compute it: it teaches nothing


def test_without_stores_there_are_no_effects_or_rows() -> None:
    s = state(analytics=False)
    s.rules = None
    out = process_batch(records(json.dumps(json.loads(event(Kind.LIKE).model_dump_json())).encode()), s, NOW)
    assert len(out.events) == 1 and out.effects == [] and out.rows == {}


def test_a_failing_recommender_parks_the_batch_in_the_dlq(monkeypatch: pytest.MonkeyPatch) -> None:
    s = state()

    def broken(*args: object) -> None:
        raise RuntimeError("model bug")

    monkeypatch.setattr(s.recommender, "process", broken)
    out = process_batch(records(encode_batch([event(Kind.PLAY_END)], SERDE)), s, NOW)
    assert out.events == [] and [d.reason for d in out.dead] == ["processing_error"]
    assert "model bug" in out.dead[0].error


def test_a_partition_s_listeners_move_with_their_state_and_are_not_learned_twice() -> None:
    old, new = state(), state()
    batch = [event(Kind.PLAY_START, user="mover"), event(Kind.PLAY_END, user="mover"), event(Kind.REC_REQUEST, user="mover")]
    recs = [RawRecord("encore.events", 2, 40, b"mover", encode_batch(batch, SERDE)),
            RawRecord("encore.events", 1, 7, b"stay", encode_batch([event(Kind.PLAY_END, user="stay")], SERDE))]
    first = process_batch(recs, old, NOW)
    had = old.recommender.listener("mover")
    assert had["partition"] == 2 and had["plays"] == 1 and len(had["open_decisions"]) == 1
    blob = old.recommender.export_partition(2)
    assert old.recommender.listener("mover") is None and old.recommender.listener("stay") is not None
    assert new.recommender.import_partition(2, blob, NOW) == 1
    assert new.recommender.listener("mover") == had
    # the new owner reads the partition again from the committed offset: what the handoff covers
    # is not learned twice and gets no second slate, but still gets its effects and rows
    new.learned_below[2] = 41
    again = process_batch(recs[:1], new, NOW)
    assert again.slates == [] and new.recommender.listener("mover") == had
    assert len(again.effects) == len(first.effects) - 1 and len(again.rows["events"]) == 3


def test_a_reward_closed_in_an_undelivered_batch_is_sent_again_after_a_restore() -> None:
    """A snapshot taken between a batch's decision and its delivery holds the decisions that batch
    closed; the worker restored from it sends their RewardRecords again (identically), and a
    delivered batch's records leave the outbox."""
    s = state()
    slate = process_batch(records(encode_batch([event(Kind.REC_REQUEST)], SERDE)), s, NOW).slates[0]
    later = NOW + timedelta(hours=2)  # past the reward window: the next batch closes the decision
    closing = process_batch(records(encode_batch([event(Kind.PLAY_START, user="u-2")], SERDE)), s, later)
    assert [r.rec_id for r in closing.rewards] == [slate.rec_id]
    snap = s.recommender.snapshot()  # taken before the batch was delivered (kill -9 or stop next)
    restored = state()
    restored.recommender.restore(snap)
    again = process_batch(records(encode_batch([event(Kind.PLAY_START, user="u-3")], SERDE)), restored, later)
    assert again.rewards == closing.rewards
    assert process_batch(records(), restored, later).rewards == []  # sent once per restore
    s.recommender.delivered([r.rec_id for r in closing.rewards])
    assert s.recommender.unsent == {}
    fresh = state()
    fresh.recommender.restore(s.recommender.snapshot())
    assert process_batch(records(), fresh, later).rewards == []
