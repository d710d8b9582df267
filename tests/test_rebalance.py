"""Listener state follows its partition: a partition moves from one real worker to another and
its listeners' profiles and open decisions arrive intact (feedback to a slate decided on the old
worker is joined on the new one)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from deploy.local.stack import Stack, _stop
from schemas.events import Interaction, Kind, Recommendation, RewardRecord
from schemas.wire import Serde
from streams.client import EventProducer
from streams.simulator import synthetic_catalogue
from tests.conftest import API_KEY, start_worker, wait
from tests.test_e2e import read_topic

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
CAT = synthetic_catalogue(7, 2000)


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"X-API-Key": API_KEY}), timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_a_moved_partition_brings_its_listeners_profiles_and_open_decisions(stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    prefix = f"rb{uuid.uuid4().hex[:4]}."
    own = Stack(stack.settings.model_copy(update={"topic_prefix": prefix, "app_id": f"rb-{uuid.uuid4().hex[:6]}",
                                                  "state_dir": tmp_path}))
    own.ensure_topics()
    common = {"analytics_enabled": False, "gamification_enabled": False, "topic_prefix": prefix,
              "app_id": own.settings.app_id, "state_dir": tmp_path, "reward_window_s": 300.0, "api_keys": API_KEY}
    settings, url_a = start_worker(own, "worker-a", worker_id="a", **common)
    wait("worker a to own every partition", lambda: get(url_a + "/readyz")[1].get("partitions") == [0, 1, 2, 3])
    users = [f"mover-{uuid.uuid4().hex[:6]}" for _ in range(12)]
    now = datetime.now(UTC)
    requests = {}
    with EventProducer(settings, batch_events=50) as producer:
        for n, user in enumerate(users):
            events = []
            for k in range(3):  # three completed plays build the listener's profile
                track = CAT.track_ids[(n * 7 + k) % len(CAT)]
                for kind in (Kind.PLAY_START, Kind.PLAY_END):
                    events.append(Interaction(event_id=uuid.uuid4(), user_id=user, session_id=f"s-{user}",
                                              occurred_at=now + timedelta(seconds=k), kind=kind, track_id=track,
                                              listened_ms=200_000))
            requests[user] = Interaction(event_id=uuid.uuid4(), user_id=user, session_id=f"s-{user}",
                                         occurred_at=now + timedelta(seconds=5), kind=Kind.REC_REQUEST)
            producer.send_many([*events, requests[user]])
    serde = Serde()
    want = {r.event_id for r in requests.values()}
    slates = {s.user_id: s for s in (serde.decode(m.value(), Recommendation) for m in read_topic(
        settings, "encore.recommendations",
        lambda ms: want <= {serde.decode(m.value(), Recommendation).request_id for m in ms}, timeout=60))
        if s.request_id in want}
    before = {u: get(f"{url_a}/v1/users/{u}/model")[1] for u in users}
    assert all(b["plays"] == 3 and b["completions"] == 3 and len(b["open_decisions"]) == 1 for b in before.values())

    _, url_b = start_worker(own, "worker-b", worker_id="b", **common)
    try:
        b_parts = wait("worker b to take partitions", lambda: get(url_b + "/readyz")[1].get("partitions"))
        wait("worker a to keep the others", lambda: get(url_a + "/readyz")[1].get("partitions")
             and sorted(get(url_a + "/readyz")[1]["partitions"] + b_parts) == [0, 1, 2, 3])
        moved = [u for u in users if before[u]["partition"] in b_parts]
        assert moved, f"no listener's partition moved to b ({b_parts}); partitions {[before[u]['partition'] for u in users]}"
        for u in moved:  # on b now, exactly as a had it
            status, there = get(f"{url_b}/v1/users/{u}/model")
            assert status == 200 and there["worker_id"] == "b"
            assert {k: there[k] for k in ("plays", "completions", "recent_tracks", "open_decisions", "partition")} == \
                {k: before[u][k] for k in ("plays", "completions", "recent_tracks", "open_decisions", "partition")}
            assert get(f"{url_a}/v1/users/{u}/model")[0] == 404  # and no longer on a
        # feedback to the slate a decided is joined on b: its reward record carries that feedback
        user = moved[0]
        slate = slates[user]
        item = slate.items[0]
        feedback = [Interaction(event_id=uuid.uuid4(), user_id=user, session_id=f"s-{user}",
                                occurred_at=now + timedelta(seconds=6 + i), kind=kind, track_id=item.track_id,
                                rec_id=slate.rec_id, position=0, listened_ms=180_000)
                    for i, kind in enumerate((Kind.PLAY_START, Kind.PLAY_END, Kind.LIKE))]
        # and a later event of the listener's own clock closes the decision's window on b
        late = Interaction(event_id=uuid.uuid4(), user_id=user, session_id=f"s-{user}",
                           occurred_at=now + timedelta(seconds=400), kind=Kind.REC_REQUEST)
        with EventProducer(settings, batch_events=50) as producer:
            producer.send_many([*feedback, late])
        records = read_topic(settings, "encore.rewards", lambda ms: any(
            serde.decode(m.value(), RewardRecord).rec_id == slate.rec_id for m in ms), timeout=60)
        (reward,) = [r for r in (serde.decode(m.value(), RewardRecord) for m in records) if r.rec_id == slate.rec_id]
        assert reward.feedback_events == 2 and reward.items[0].reward is not None and reward.items[0].reward > 0
    finally:
        for name in ("worker-b", "worker-a"):
            pid = own.pid_of(name)
            if pid:
                _stop(pid)
