"""End to end on real services: simulator -> tansu -> a real Faust worker process ->
recommendations and dead letters read back with a plain confluent-kafka consumer."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from schemas.events import DeadLetter, Interaction, Kind, Recommendation
from schemas.wire import Serde
from streams.client import EventProducer
from streams.settings import Settings
from streams.simloop import BAD_RECORDS, ClosedLoop
from streams.simulator import World, synthetic_catalogue
from tests.conftest import API_KEY, MAX_RECORD, settings_env

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
SERDE = Serde()
README = Path(__file__).resolve().parent.parent / "README.md"


def read_topic(settings: Settings, topic: str, until: object, timeout: float = 30.0) -> list:
    """Every record of ``topic`` from the beginning (plain confluent consumer), polling until
    ``until(records)`` holds or the timeout passes."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"t-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "fetch.wait.max.ms": 10,
                         "session.timeout.ms": 6000})  # tansu: a join waits half of it
    consumer.subscribe([settings.topic(topic)])
    records: list = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.2):
                if not msg.error():
                    records.append(msg)
            if until(records):  # type: ignore[operator]
                break
    finally:
        consumer.close()
    return records


def worker_total(url: str, metric: str) -> float:
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    return sum(float(v) for v in re.findall(rf"^{metric}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def _request(user: str, **kw: object) -> Interaction:
    return Interaction(event_id=uuid.uuid4(), user_id=user, session_id="s-e2e", occurred_at=datetime.now(UTC),
                       kind=Kind.REC_REQUEST, **kw)


def test_closed_loop_every_request_gets_a_slate_and_bad_records_reach_the_dlq(worker) -> None:  # type: ignore[no-untyped-def]
    settings, url = worker
    events_before = worker_total(url, "encore_events_total")
    world = World(synthetic_catalogue(7, 2000), n_listeners=300, seed=5)
    loop = ClosedLoop(settings, world, concurrency=60, bad_rate=0.2, seed=5)
    try:
        stats = loop.run(8.0)
    finally:
        loop.close()
    assert stats.requests > 100 and stats.slates == stats.requests and stats.timed_out == 0
    assert stats.completions + stats.skips > 500 and stats.propensity_ok

    # what another service sees on the recommendations topic
    def all_answered(records: list) -> bool:
        return stats.request_ids <= {SERDE.decode(m.value(), Recommendation).request_id for m in records}

    recs = [(m.key().decode(), SERDE.decode(m.value(), Recommendation)) for m in
            read_topic(settings, "encore.recommendations", all_answered)]
    answered = {r.request_id: (key, r) for key, r in recs}
    assert stats.request_ids <= set(answered)
    for request_id in stats.request_ids:
        key, rec = answered[request_id]
        assert key == rec.user_id and key.startswith("u-")
        assert len(rec.items) == 10 and len({i.track_id for i in rec.items}) == 10
        assert all(0 < i.propensity <= 1 for i in rec.items)
        assert rec.slate_propensity == pytest.approx(float(__import__("math").prod(i.propensity for i in rec.items)))
        assert [i.position for i in rec.items] == list(range(10)) and rec.policy_id == settings.policy

    # every injected malformed record is in the DLQ with its reason; nothing else from the loop is
    sim_users = {listener.user_id for listener in world.listeners}
    injected = sum(stats.bad_injected.values())
    assert injected > 5

    def letters(records: list) -> list[DeadLetter]:
        return [d for d in (SERDE.decode(m.value(), DeadLetter) for m in records)
                if d.key and d.key.decode() in sim_users and d.raw in BAD_RECORDS.values()]

    dead = letters(read_topic(settings, "encore.events.dlq", lambda r: len(letters(r)) >= injected))
    assert Counter(d.reason for d in dead) == stats.bad_injected
    assert all(BAD_RECORDS[d.reason] == d.raw and d.topic == settings.topic("encore.events") for d in dead)

    # and the good events around them were all processed, once (the last batch may still be in
    # flight: wait for the count to reach the events sent, then check it does not go past it)
    deadline = time.monotonic() + 30
    while worker_total(url, "encore_events_total") - events_before < stats.events and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1.0)
    assert worker_total(url, "encore_events_total") - events_before == stats.events


def test_malformed_records_between_good_ones(worker) -> None:  # type: ignore[no-untyped-def]
    settings, _ = worker
    user = f"u-mixed-{uuid.uuid4().hex[:6]}"
    good = [_request(user) for _ in range(4)]
    rec = Recommendation(rec_id=uuid.uuid4(), request_id=uuid.uuid4(), user_id=user, session_id="s", items=[],
                         slate_propensity=1.0, policy_id="x", policy_version="1", created_at=datetime.now(UTC))
    bad = {
        "bad_json": b"{not json",
        "wrong_schema": SERDE.encode(rec),
        "unknown_kind": json.dumps({"user_id": user, "kind": "no_such_kind"}).encode(),
        "missing_field": json.dumps({"user_id": user, "kind": "like", "track_id": "t-00001"}).encode(),
        "wrong_type": json.dumps({**json.loads(good[0].model_dump_json()), "event_id": str(uuid.uuid4()),
                                  "occurred_at": {"day": 1}}).encode(),
        "oversized": json.dumps({"pad": "x" * (MAX_RECORD + 10)}).encode(),
    }
    batch_with_one_bad = json.dumps({"events": [json.loads(good[2].model_dump_json()), {"kind": "rating"}]}).encode()
    with EventProducer(settings, batch_events=1) as producer:
        producer.send_raw(user, good[0].model_dump_json().encode())  # JSON
        for value in list(bad.values())[:3]:
            producer.send_raw(user, value)
        producer.send(good[1])  # Avro
        for value in list(bad.values())[3:]:
            producer.send_raw(user, value)
        producer.send_raw(user, batch_with_one_bad)
        producer.send(good[3])

    want = {g.event_id for g in good}
    recs = read_topic(settings, "encore.recommendations",
                      lambda r: want <= {SERDE.decode(m.value(), Recommendation).request_id for m in r})
    slates = [SERDE.decode(m.value(), Recommendation) for m in recs]
    mine = [s for s in slates if s.user_id == user]
    assert sorted(str(s.request_id) for s in mine) == sorted(str(g.event_id) for g in good)

    def mine_dead(records: list) -> list[DeadLetter]:
        return [d for d in (SERDE.decode(m.value(), DeadLetter) for m in records) if d.key == user.encode()]

    dead = mine_dead(read_topic(settings, "encore.events.dlq", lambda r: len(mine_dead(r)) >= len(bad) + 1))
    by_reason = {d.reason: d for d in dead}
    assert set(by_reason) == set(bad) | {"missing_field"} and len(dead) == len(bad) + 1
    for reason, value in bad.items():
        letter = by_reason[reason] if reason != "missing_field" else next(
            d for d in dead if d.reason == "missing_field" and d.index is None)
        assert letter.raw == (value if reason != "oversized" else value[:4096])
        assert letter.error and letter.step == "ingest.decode" and letter.offset >= 0
    inner = next(d for d in dead if d.index == 1)
    assert inner.reason == "missing_field" and json.loads(inner.raw) == {"kind": "rating"}


def test_a_redelivered_request_gets_the_same_slate_again(worker) -> None:  # type: ignore[no-untyped-def]
    settings, _ = worker
    request, marker = _request(f"u-dup-{uuid.uuid4().hex[:6]}"), _request("u-dup-marker")
    with EventProducer(settings, batch_events=1) as producer:
        producer.send(request)
        producer.send_raw(request.user_id, request.model_dump_json().encode())  # same event_id, as JSON
        producer.send(request)
    with EventProducer(settings, batch_events=1) as producer:
        producer.send(marker.model_copy(update={"user_id": request.user_id}))
    recs = read_topic(settings, "encore.recommendations",
                      lambda r: any(SERDE.decode(m.value(), Recommendation).request_id == marker.event_id for m in r))
    answers = [m for m in recs if SERDE.decode(m.value(), Recommendation).request_id == request.event_id]
    # at-least-once: a redelivered request may be answered again, but only with the first slate
    assert answers and len({m.value() for m in answers}) == 1


def _readme_block(title: str) -> str:
    text = README.read_text()
    section = text.split(title, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def test_readme_foreign_client_example_yields_a_slate_and_a_dead_letter(worker, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Runs the README's kafka-python snippet as written, then the README's tail command."""
    settings, _ = worker
    monkeypatch.setenv("ENCORE_KAFKA_BOOTSTRAP", settings.kafka_bootstrap)
    exec(compile(_readme_block("### Produce from any Kafka client"), "README.md", "exec"), {})
    request_id = uuid.UUID("0b9a6c1e-5d2f-4c1a-9a51-3f1e2d4c5b6a")
    recs = read_topic(settings, "encore.recommendations",
                      lambda r: any(SERDE.decode(m.value(), Recommendation).request_id == request_id for m in r))
    (slate_msg,) = [m for m in recs if SERDE.decode(m.value(), Recommendation).request_id == request_id][:1]
    assert slate_msg.key() == b"u-42"
    slate = SERDE.decode(slate_msg.value(), Recommendation)
    assert slate.context.activity == "workout" and slate.context.timezone == "UTC" and len(slate.items) == 10

    bad_value = json.dumps({"user_id": 42, "kind": "no_such_kind"}).encode()
    dead = read_topic(settings, "encore.events.dlq",
                      lambda r: any(SERDE.decode(m.value(), DeadLetter).raw == bad_value for m in r))
    letter = next(d for d in (SERDE.decode(m.value(), DeadLetter) for m in dead) if d.raw == bad_value)
    assert letter.reason == "unknown_kind" and "no_such_kind" in letter.error

    # the project's own CLI tails the topic decoded
    out = subprocess.run(
        [sys.executable, "-m", "streams.cli", "tail", "encore.recommendations", "--from-beginning", "--timeout", "10"],
        env={**settings_env(settings), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60,
        cwd=README.parent,
    )
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    mine = [r for r in lines if r["key"] == "u-42" and r["value"]["request_id"] == str(request_id)]
    assert mine and mine[0]["type"] == "Recommendation" and mine[0]["value"]["items"][0]["propensity"] > 0


def test_demo_command_prints_its_summary(worker) -> None:  # type: ignore[no-untyped-def]
    settings, url = worker
    out = subprocess.run(
        [sys.executable, "-m", "streams.cli", "demo", "--seconds", "4", "--listeners", "200", "--concurrency", "40",
         "--bad-rate", "0.05"],
        env={**settings_env(settings), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}, capture_output=True, text=True,
        timeout=120, cwd=README.parent,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    processed = re.search(r"events processed by the worker\s*│\s*([\d,]+) = ([\d,]+) events/s", out.stdout)
    sent = re.search(r"events sent by listeners\s*│\s*([\d,]+) in", out.stdout)
    assert processed and sent and processed.group(1) == sent.group(1) and int(sent.group(1).replace(",", "")) > 0
    assert "Top tracks" in out.stdout and "timed out 0" in out.stdout
    # the demo ends with the embedding job: trained on the events in ClickHouse (read through the
    # worker), published, and served by the worker without a restart
    assert "published " in out.stdout and "the worker serves it" in out.stdout, out.stdout
    served = worker_total(url, "encore_embeddings_tracks")
    assert 0 < served <= 2000 and worker_total(url, "encore_embeddings_trained_timestamp_seconds") > 0
    user = next(m.group(1) for m in re.finditer(r"(u-\d{5})", out.stdout))
    model = json.loads(urllib.request.urlopen(urllib.request.Request(
        f"{url}/v1/users/{user}/model", headers={"X-API-Key": API_KEY}), timeout=5).read())
    assert model["embeddings"] and model["embeddings"].startswith("als-")


def test_worker_awards_karma_once_and_malformed_events_change_nothing(worker) -> None:  # type: ignore[no-untyped-def]
    import redis

    from agents.gamify import Rules
    from schemas.events import GamificationEvent
    from sinks.gamification import GamificationStore

    settings, _ = worker
    user = f"u-karma-{uuid.uuid4().hex[:6]}"
    now = datetime.now(UTC)
    plays = [Interaction(event_id=uuid.uuid4(), user_id=user, session_id="s", occurred_at=now, kind=Kind.PLAY_END,
                         track_id="t-00010") for _ in range(3)]
    malformed = [
        json.dumps({"event_id": str(uuid.uuid4()), "user_id": user, "session_id": "s",
                    "occurred_at": now.isoformat(), "kind": "like"}).encode(),  # like without a track
        json.dumps({"user_id": user, "kind": "play_end", "track_id": "t-00010"}).encode(),  # no id, no time
    ]
    with EventProducer(settings, batch_events=1) as producer:
        producer.send(plays[0])
        for value in malformed:
            producer.send_raw(user, value)
        producer.send_many(plays[1:])
        producer.send(plays[0])  # redelivered: must not count twice
        producer.send(_request(user))  # marker: processed after everything above

    def karma_events(records: list) -> list[GamificationEvent]:
        return [g for g in (SERDE.decode(m.value(), GamificationEvent) for m in records) if g.user_id == user]

    read_topic(settings, "encore.recommendations",
               lambda r: any(SERDE.decode(m.value(), Recommendation).user_id == user for m in r))
    store = GamificationStore(redis.Redis.from_url(settings.redis_url), Rules.from_toml(settings.gamification_rules),
                              prefix=settings.redis_prefix)
    profile = store.profile(user)
    w = store.rules.karma
    assert profile["stats"]["listens"] == 3 and "likes" not in profile["stats"]
    assert profile["karma"] == 3 * w["listen"] + w["new_artist"]
    assert store.rank(user) is not None
    events = karma_events(read_topic(settings, "encore.gamification", lambda r: len(karma_events(r)) >= 4))
    deltas = [g for g in events if g.karma_delta]
    # a redelivered event may re-emit its output (at-least-once), but identically: one per event id
    once = {g.event_id: g.model_dump(exclude={"created_at"}) for g in deltas}
    assert all(g.model_dump(exclude={"created_at"}) == once[g.event_id] for g in deltas)
    assert sorted(once) == sorted(p.event_id for p in plays)
    assert max(g.karma_total for g in deltas) == profile["karma"]  # a re-emission carries its own, earlier total
    assert any(g.avatar_unlocked == "basic-headphones" for g in events)
    dead = read_topic(settings, "encore.events.dlq",
                      lambda r: sum(SERDE.decode(m.value(), DeadLetter).raw in malformed for m in r) >= 2)
    reasons = sorted(d.reason for d in (SERDE.decode(m.value(), DeadLetter) for m in dead) if d.raw in malformed)
    assert reasons == ["invalid_value", "missing_field"]
