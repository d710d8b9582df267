"""The recommender's learning on real services: the reward join against the broker (duplicate,
out-of-order, late feedback, default rewards), model state surviving a restart (snapshot +
replay), and two workers converging through model deltas on encore.models."""

from __future__ import annotations

import json
import signal
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agents.recommend import REC_NAMESPACE
from schemas.events import Interaction, Kind, Recommendation, RewardRecord
from schemas.wire import Serde
from streams.client import EventProducer
from streams.settings import Settings
from streams.simloop import ClosedLoop
from streams.simulator import World, synthetic_catalogue
from streams.topics import create_topics
from tests.conftest import start_worker
from tests.test_e2e import read_topic, worker_total

pytestmark = [pytest.mark.integration]
SERDE = Serde()


def _isolated(stack, name: str, **overrides: object) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Overrides giving a worker its own topics and consumer group on the shared broker."""
    prefix = f"{name}-{uuid.uuid4().hex[:6]}."
    create_topics(stack.settings.model_copy(update={"topic_prefix": prefix}))
    return {"topic_prefix": prefix, "app_id": f"encore-{name}-{uuid.uuid4().hex[:6]}", "analytics_enabled": False,
            "gamification_enabled": False, **overrides}


def _event(user: str, kind: Kind, at: datetime, **kw: object) -> Interaction:
    return Interaction(event_id=uuid.uuid4(), user_id=user, session_id=f"s-{user}", occurred_at=at, kind=kind,
                       context={"activity": "workout"}, **kw)


def _rewards(settings: Settings, want: set[uuid.UUID], timeout: float = 60) -> dict[uuid.UUID, list[RewardRecord]]:
    msgs = read_topic(settings, "encore.rewards",
                      lambda r: want <= {SERDE.decode(m.value(), RewardRecord).rec_id for m in r}, timeout=timeout)
    out: dict[uuid.UUID, list[RewardRecord]] = {}
    for m in msgs:
        rec = SERDE.decode(m.value(), RewardRecord)
        out.setdefault(rec.rec_id, []).append(rec)
    return out


@pytest.fixture(scope="module")
def ten_tracks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A catalogue of exactly one slate: every slate holds all 10 tracks, so a test can send
    feedback on a track before it has seen the slate."""
    path = tmp_path_factory.mktemp("cat") / "ten.jsonl"
    rows = [{"track_id": f"tt-{i}", "artist_id": f"aa-{i}", "genre": "pop", "popularity": 0.5, "duration_ms": 200_000,
             "tempo": 0.5, "energy": i / 10, "valence": 0.5, "danceability": 0.5, "acousticness": 0.5} for i in range(10)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_reward_join_on_the_broker_handles_duplicate_out_of_order_and_late_feedback(stack, ten_tracks) -> None:  # type: ignore[no-untyped-def]
    settings, url = start_worker(stack, "worker-join", **_isolated(
        stack, "join", catalogue=str(ten_tracks), reward_window_s=20.0))
    policy = settings.policy
    t0 = datetime.now(UTC).replace(microsecond=0)
    a, b, c = (f"join-{x}-{uuid.uuid4().hex[:6]}" for x in "abc")
    req_a, req_b, req_c = (_event(u, Kind.REC_REQUEST, t0) for u in (a, b, c))
    rec_id = {r.user_id: uuid.uuid5(REC_NAMESPACE, f"{policy}:{r.event_id}") for r in (req_a, req_b, req_c)}
    # B: feedback that reaches the worker BEFORE its decision (out of order)
    early = _event(b, Kind.THUMBS_DOWN, t0 + timedelta(seconds=1), track_id="tt-5", rec_id=rec_id[b])
    with EventProducer(settings, batch_events=1) as producer:
        producer.send_many([early, req_a, req_b, req_c])
    recs = read_topic(settings, "encore.recommendations",
                      lambda r: len({SERDE.decode(m.value(), Recommendation).rec_id for m in r} & set(rec_id.values())) == 3)
    slate = {s.rec_id: s for s in (SERDE.decode(m.value(), Recommendation) for m in recs)}
    items_a = [i.track_id for i in slate[rec_id[a]].items]
    # A: completion at 0 (sent twice: a duplicate), early skip at 1, nothing at 2, late skip at 3
    play_end = _event(a, Kind.PLAY_END, t0 + timedelta(seconds=2), track_id=items_a[0], rec_id=rec_id[a], position=0,
                      listened_ms=200_000)
    feedback = [
        _event(a, Kind.PLAY_START, t0 + timedelta(seconds=1), track_id=items_a[0], rec_id=rec_id[a], position=0),
        play_end, play_end,
        _event(a, Kind.SKIP, t0 + timedelta(seconds=3), track_id=items_a[1], rec_id=rec_id[a], position=1,
               listened_ms=4_000),
        _event(a, Kind.SKIP, t0 + timedelta(seconds=4), track_id=items_a[3], rec_id=rec_id[a], position=3,
               listened_ms=60_000),
    ]
    # then each listener's event clock moves past the window (a new request a minute later)
    # closes their decisions, and C's only feedback arrives after that: late
    ticks = [_event(u, Kind.REC_REQUEST, t0 + timedelta(seconds=60)) for u in (a, b, c)]
    late = _event(c, Kind.LIKE, t0 + timedelta(seconds=2), track_id="tt-1", rec_id=rec_id[c])
    with EventProducer(settings, batch_events=1) as producer:
        producer.send_many(feedback)
        producer.flush()
        producer.send_many(ticks)
        producer.flush()
        _rewards(settings, {rec_id[c]})  # C's decision is closed
        producer.send_many([late])
    got = _rewards(settings, set(rec_id.values()))
    assert all(len(got[r]) == 1 for r in rec_id.values())  # one record per decision
    ra, rb, rc = (got[rec_id[u]][0] for u in (a, b, c))
    assert [i.reward for i in ra.items[:5]] == [1.0, -0.5, 0.0, -0.1, None]  # duplicate counted once
    assert all(i.reward is None for i in ra.items[4:]) and ra.feedback_events == 3  # play_start is not feedback
    pos_b = next(i.position for i in rb.items if i.track_id == "tt-5")
    assert rb.items[pos_b].reward == -1.0 and all(i.reward == 0.0 for i in rb.items[:pos_b])
    assert all(i.reward is None for i in rc.items)  # the late like was not joined
    assert all(0 < i.propensity <= 1 for i in ra.items) and ra.policy_id == policy
    deadline = time.monotonic() + 20
    while worker_total(url, 'encore_reward_join{what="late"}') < 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert worker_total(url, 'encore_reward_join{what="late"}') >= 1
    assert worker_total(url, 'encore_reward_join{what="early"}') >= 1
    assert worker_total(url, "encore_duplicate_events_total") >= 1  # the step drops it before the join
    assert worker_total(url, "encore_reward_items_total") == 4 + pos_b + 1  # reached items of A and B
    stack_stop(stack, "worker-join")


def stack_stop(stack, name: str, sig: int = signal.SIGTERM) -> None:  # type: ignore[no-untyped-def]
    import os

    from deploy.local.stack import _alive

    pid = stack.pid_of(name)
    if pid is None:
        return
    os.killpg(pid, sig)
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    (stack.run_dir / f"{name}.pid").unlink(missing_ok=True)


def _wait_metric(url: str, metric: str, at_least: float, timeout: float = 60) -> float:
    deadline = time.monotonic() + timeout
    while True:
        value = worker_total(url, metric)
        if value >= at_least or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def _traffic(settings: Settings, seconds: float, seed: int) -> None:
    world = World(synthetic_catalogue(7, 2000), n_listeners=100, seed=seed, run_id=uuid.uuid4().hex)
    loop = ClosedLoop(settings, world, concurrency=30, bad_rate=0.0, seed=seed)
    try:
        loop.run(seconds)
    finally:
        loop.close()


def test_model_state_survives_a_restart_by_snapshot_and_replay(stack) -> None:  # type: ignore[no-untyped-def]
    overrides = _isolated(stack, "restart", reward_window_s=1.0, model_sync_interval_s=0.5,
                          model_snapshot_interval_s=1.0, worker_id="restart-1")
    settings, url = start_worker(stack, "worker-restart", **overrides)
    _traffic(settings, 6.0, seed=21)
    learned = _wait_metric(url, "encore_model_rows", 100)
    assert learned >= 100
    time.sleep(2.5)  # at least one snapshot after the traffic
    stack_stop(stack, "worker-restart", signal.SIGKILL)  # no goodbye snapshot: replay must fill the gap
    snaps = list((settings.state_dir / "models").glob(f"{settings.app_id}-*.snapshot"))
    assert snaps, "no snapshot written"
    settings, url = start_worker(stack, "worker-restart", **{**overrides, "web_port": settings.web_port})
    restored = worker_total(url, "encore_model_rows")
    assert restored >= 0.9 * learned  # learning kept (replay may close a few windows differently)
    _traffic(settings, 3.0, seed=22)
    after = _wait_metric(url, "encore_model_rows", restored + 10)
    assert after > restored, {m: worker_total(url, m) for m in (
        "encore_events_total", "encore_recommendations_total", "encore_reward_items_total", "encore_reward_join",
        "encore_replayed_records_total")} | {"join": [ln for ln in __import__("urllib.request").request.urlopen(
            url + "/metrics").read().decode().splitlines() if ln.startswith(("encore_reward_join", "encore_model"))]}
    stack_stop(stack, "worker-restart")


def test_two_workers_converge_through_model_deltas(stack) -> None:  # type: ignore[no-untyped-def]
    overrides = _isolated(stack, "deltas", reward_window_s=1.0, model_sync_interval_s=0.5)
    s1, url1 = start_worker(stack, "worker-d1", **overrides, worker_id="d1")
    s2, url2 = start_worker(stack, "worker-d2", **overrides, worker_id="d2")
    try:
        deadline = time.monotonic() + 60
        while True:  # both own partitions before traffic starts
            parts = [json.loads(__import__("urllib.request").request.urlopen(u + "/readyz", timeout=5).read())
                     ["partitions"] for u in (url1, url2)]
            if all(parts) and sorted(parts[0] + parts[1]) == list(range(s1.partitions)):
                break
            assert time.monotonic() < deadline, f"partitions not shared: {parts}"
            time.sleep(0.5)
        _traffic(s1, 6.0, seed=31)
        time.sleep(4.0)  # windows close, deltas go out and come in
        rows = []
        for _ in range(20):
            rows = [worker_total(u, "encore_model_rows") for u in (url1, url2)]
            if rows[0] > 0 and abs(rows[0] - rows[1]) < 1e-6 * max(rows):
                break
            time.sleep(0.5)
        merged = [worker_total(u, 'encore_model_deltas_total{direction="merged"}') for u in (url1, url2)]
        assert all(m > 0 for m in merged), merged
        assert rows[0] > 0 and rows[0] == pytest.approx(rows[1], rel=1e-6), rows  # the same model on both
    finally:
        stack_stop(stack, "worker-d1")
        stack_stop(stack, "worker-d2")


def test_the_worker_serves_the_session_dqn_and_trains_it_off_the_stream(stack) -> None:  # type: ignore[no-untyped-def]
    settings, url = start_worker(stack, "worker-dqn", **_isolated(stack, "dqn", policy="session-dqn",
                                                                   reward_window_s=1.0, rl_train_steps=5))
    try:
        _traffic(settings, 6.0, seed=41)
        recs = read_topic(settings, "encore.recommendations", lambda r: len(r) >= 20)
        slates = [SERDE.decode(m.value(), Recommendation) for m in recs]
        assert slates and all(s.policy_id == "session-dqn" for s in slates)
        assert all(0 < i.propensity <= 1 and i.explanation for s in slates for i in s.items)
        assert _wait_metric(url, "encore_model_rows", 64) >= 64  # transitions in the replay buffer
        deadline = time.monotonic() + 30
        while worker_total(url, "encore_rl_td_loss") == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert worker_total(url, "encore_rl_td_loss") > 0  # it trained (in a thread) while serving
    finally:
        stack_stop(stack, "worker-dqn")
