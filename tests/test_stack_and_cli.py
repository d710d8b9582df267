"""The local stack (deploy.local) and the encore CLI against the real session services."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from deploy.local.stack import Stack, free_port
from schemas.wire import Serde, decode_events
from streams.cli import read_history
from streams.topics import CATALOGUE
from tests.conftest import settings_env
from tests.test_e2e import read_topic

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.integration
def test_topics_exist_with_their_partition_counts(settings) -> None:  # type: ignore[no-untyped-def]
    topics = AdminClient(settings.kafka_config()).list_topics(timeout=10).topics
    for spec in CATALOGUE:
        assert len(topics[settings.topic(spec.name)].partitions) == (spec.partitions or settings.partitions)


@pytest.mark.integration
def test_up_reuses_running_services_and_down_stops_only_what_it_started(stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    own = Stack(stack.settings.model_copy(update={
        "kafka_bootstrap": f"127.0.0.1:{free_port()}", "state_dir": tmp_path}))
    assert own.ensure_broker().startswith("broker: started tansu")
    assert own.ensure_broker().startswith("broker: using")  # idempotent
    assert own.ensure_redis().startswith("redis: using")  # the session's Redis, not started again
    assert "created" in own.ensure_topics()
    assert own.ensure_topics() == f"topics: {len(CATALOGUE)} in catalogue, 0 created"
    assert [p.stem for p in (tmp_path / "run").glob("*.pid")] == ["broker"]
    lines = own.down()
    assert lines == [f"broker: stopped (pid {lines[0].split('pid ')[1][:-1]})"]
    assert not own.broker_healthy()
    assert stack.redis_healthy() and stack.broker_healthy()


def test_history_csv_becomes_events_with_stable_ids(tmp_path) -> None:  # type: ignore[no-untyped-def]
    csv = tmp_path / "h.csv"
    csv.write_text(
        "user,track,timestamp,artist,duration,action\n"
        "alice,t-1,2026-11-20T10:00:00Z,a-1,200,play\n"
        "alice,t-2,2026-11-20T10:04:00Z,a-1,180,skip\n"
        "alice,t-3,2026-11-20T13:00:00Z,,,like\n"
        "bob,t-1,1763632800,a-1,200000,\n"
    )
    first, again = list(read_history(csv)), list(read_history(csv))
    assert [e.event_id for e in first] == [e.event_id for e in again]
    assert [e.kind for e in first] == ["play_end", "skip", "like", "play_end"]
    assert first[0].session_id == first[1].session_id != first[2].session_id  # 30-minute gap rule
    assert first[0].track_duration_ms == 200_000 and first[3].track_duration_ms == 200_000
    bad = tmp_path / "bad.csv"
    bad.write_text("user,track\nalice,t-1\n")
    with pytest.raises(SystemExit, match="timestamp"):
        list(read_history(bad))
    bad.write_text("user,track,timestamp,action\nalice,t-1,2026-11-20T10:00:00Z,dance\n")
    with pytest.raises(SystemExit, match="unknown action"):
        list(read_history(bad))


@pytest.mark.integration
def test_replay_cli_sends_the_history_to_the_events_topic(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    user = f"replay-{uuid.uuid4().hex[:6]}"
    csv = tmp_path / "h.csv"
    rows = [f"{user},t-{i:05d},2026-11-20T10:{i:02d}:00Z,a-0001,200,play" for i in range(25)]
    csv.write_text("user,track,timestamp,artist,duration,action\n" + "\n".join(rows) + "\n")
    out = subprocess.run([sys.executable, "-m", "streams.cli", "replay", str(csv), "--speed", "0"],
                         env={**settings_env(settings), "PATH": "/usr/bin:/bin"}, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    serde = Serde()

    def mine(records: list) -> list:
        return [e for m in records if m.key() == user.encode()
                for e in decode_events(m.value(), serde, max_bytes=10**7, max_events=1000).events]

    events = mine(read_topic(settings, "encore.events", lambda r: len(mine(r)) >= 25))
    assert [e.track_id for e in events] == [f"t-{i:05d}" for i in range(25)]
    assert {str(e.event_id) for e in events} == {str(e.event_id) for e in read_history(csv)}


@pytest.mark.integration
def test_produce_cli_sends_json_lines_as_they_are(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    user = f"prod-{uuid.uuid4().hex[:6]}"
    lines = [json.dumps({"user_id": user, "kind": "no_such_kind", "n": i}) for i in range(3)] + ["not json"]
    src = tmp_path / "e.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = subprocess.run([sys.executable, "-m", "streams.cli", "produce", str(src)],
                         env={**settings_env(settings), "PATH": "/usr/bin:/bin"}, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "sent 4 records" in out.stdout
    values = {m.value().decode(errors="replace") for m in read_topic(
        settings, "encore.events", lambda r: sum(m.value() in [x.encode() for x in lines] for m in r) >= 4)}
    assert set(lines) <= values
