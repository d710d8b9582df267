"""Gamification against a real Redis server: each event once, in any order or split."""

from __future__ import annotations

import random
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.gamify import Effect, Rules, effect_for
from schemas.events import GamificationEvent, Interaction, Kind
from sinks.gamification import CHUNK_EVENTS, GamificationStore, board_key, weekly_board
from streams.simulator import synthetic_catalogue

pytestmark = pytest.mark.integration
RULES_FILE = Path(__file__).resolve().parent.parent / "deploy" / "config" / "gamification.toml"
RULES = Rules.from_toml(RULES_FILE)
CAT = synthetic_catalogue(7, 500)
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@pytest.fixture()
def client(settings) -> redis.Redis:  # type: ignore[no-untyped-def]
    return redis.Redis.from_url(settings.redis_url)


def store(client: redis.Redis, rules: Rules = RULES, cluster: bool = False) -> GamificationStore:
    """cluster=True takes the Redis Cluster path (one script call per hash slot, boards written
    in a second pass) on the same single Redis; the default writes boards inside APPLY."""
    return GamificationStore(client, rules, prefix=f"t{uuid.uuid4().hex[:8]}", cluster=cluster)


MODES = pytest.mark.parametrize("cluster", [False, True], ids=["one-redis", "cluster-path"])


def dump(s: GamificationStore) -> dict:
    """Every key of this store with its full content (the state to compare), keyed without the
    store's prefix. Leaves out the boards' version hashes: they record which batch wrote a
    score last (the writer's sequence number, a concurrency guard), not listener state, and so
    differ with the split by design. Their scores, members and all listener keys are compared."""
    out = {}
    for key in s.redis.scan_iter(match=f"{s.prefix}:*", count=1000):
        if key.startswith(f"{s.prefix}:lb:".encode()) and key.endswith(b":v") or b":meta:" in key \
                or key.endswith(b":o"):  # the outbox records how batches were split, not listener state
            continue
        kind = s.redis.type(key).decode()
        if kind == "hash":
            out[key] = s.redis.hgetall(key)
        elif kind == "set":
            out[key] = s.redis.smembers(key)
        elif kind == "zset":
            out[key] = s.redis.zrange(key, 0, -1, withscores=True)
        else:
            raise AssertionError(f"unexpected {kind} key {key}")
    return {k.split(b":", 1)[1]: v for k, v in out.items()}


def history(users: int = 6, days: int = 9, seed: int = 1) -> list[Interaction]:
    rng = random.Random(seed)
    kinds = [Kind.PLAY_END, Kind.PLAY_END, Kind.SKIP, Kind.LIKE, Kind.PLAYLIST_ADD, Kind.REPLAY, Kind.THUMBS_UP,
             Kind.RATING, Kind.REC_REQUEST, Kind.PLAY_START]
    events = []
    for u in range(users):
        for d in range(days):
            if rng.random() < 0.25:
                continue  # a missed day: streaks and grace get exercised
            for _ in range(rng.randint(1, 6)):
                kind = rng.choice(kinds)
                events.append(Interaction(
                    event_id=uuid.UUID(int=rng.getrandbits(128)), user_id=f"u{u}", session_id="s",
                    occurred_at=NOW - timedelta(days=d, minutes=rng.randint(0, 600)), kind=kind,
                    track_id=None if kind == Kind.REC_REQUEST else CAT.track_ids[rng.randrange(60)],
                    rec_id=uuid.uuid4() if kind == Kind.THUMBS_UP else None,
                    rating=4.0 if kind == Kind.RATING else None, playlist_id=f"p{rng.randint(0, 2)}",
                    context={"timezone": "Europe/Berlin", "cohort": "c1" if u % 2 else None},
                ))
    return events


def effects(events: list[Interaction], rules: Rules = RULES) -> list[Effect]:
    return [f for f in (effect_for(e, rules, CAT) for e in events) if f]


@MODES
def test_redelivery_shuffle_and_split_give_identical_state(client, cluster) -> None:  # type: ignore[no-untyped-def]
    effs = effects(history())
    reference = store(client, cluster=cluster)
    first = reference.apply(effs, NOW)
    assert first.applied == len(effs) and first.duplicates == 0
    again = reference.apply(effs, NOW + timedelta(minutes=3))  # the same batch delivered twice, later
    assert again.applied == 0 and again.duplicates == len(effs)
    # nothing applied twice, and the first apply's outputs come back, identical (the outbox)
    key = lambda g: (g["event_id"], g["karma_delta"], g.get("achievement_unlocked") or "", g.get("avatar_unlocked") or "",  # noqa: E731
                     g.get("board") or "")
    expected = [g for g in first.outputs if not (cluster and g.get("board"))]  # Cluster: boards are written after APPLY
    assert sorted(again.outputs, key=key) == sorted(expected, key=key) and again.reemitted == len(expected)
    want = dump(reference)

    shuffled = store(client, cluster=cluster)
    effs_shuffled = effs[:]
    random.Random(3).shuffle(effs_shuffled)
    shuffled.apply(effs_shuffled, NOW)

    split = store(client, cluster=cluster)
    rng = random.Random(4)
    i = 0
    while i < len(effs):
        n = rng.randint(1, 40)
        split.apply(effs[i:i + n], NOW)
        i += n
    half = split.apply(effs[: len(effs) // 2], NOW)  # and a redelivered half: its outputs again
    ids = {e.event_id for e in effs[: len(effs) // 2]}
    assert half.applied == 0 and half.outputs and {g["event_id"] for g in half.outputs} <= ids

    for other in (shuffled, split):
        assert dump(other) == want


@MODES
def test_concurrent_workers_with_overlapping_batches_never_double_count(client, cluster) -> None:  # type: ignore[no-untyped-def]
    effs = effects(history(users=8, seed=7))
    reference = store(client, cluster=cluster)
    reference.apply(effs, NOW)
    want = dump(reference)

    shared = store(client, cluster=cluster)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        mine = [e for e in effs if rng.random() < 0.7]  # overlapping subsets
        rng.shuffle(mine)
        try:
            own = GamificationStore(redis.Redis(connection_pool=client.connection_pool), RULES, prefix=shared.prefix,
                                    cluster=cluster)
            for i in range(0, len(mine), 25):
                own.apply(mine[i:i + 25], NOW)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    shared.apply(effs, NOW)  # whatever no thread happened to pick
    assert dump(shared) == want


def test_both_write_paths_give_the_same_state(client) -> None:  # type: ignore[no-untyped-def]
    """Boards written inside APPLY (one Redis) and by the BOARD pass (Redis Cluster) agree, and
    batches larger than one APPLY call (CHUNK_EVENTS) are split without changing anything."""
    effs = effects(history(users=12, days=12, seed=5))
    assert len(effs) > 2 * CHUNK_EVENTS
    one, cluster = store(client), store(client, cluster=True)
    one.apply(effs, NOW)
    cluster.apply(effs, NOW)
    assert dump(one) == dump(cluster)
    assert [one.top(b, 50) for b in ("global", "cohort:c1")] == [cluster.top(b, 50) for b in ("global", "cohort:c1")]


def test_a_flushed_script_cache_is_reloaded(client) -> None:  # type: ignore[no-untyped-def]
    """After a Redis restart or SCRIPT FLUSH the first call meets NOSCRIPT: the store loads the
    script and runs the round again, and the connection stays usable."""
    effs = effects(history(users=10, days=12, seed=6))
    s = store(client)
    s.apply(effs[: len(effs) // 2], NOW)
    client.script_flush()
    result = s.apply(effs, NOW)
    assert (result.applied, result.duplicates) == (len(effs) - len(effs) // 2, len(effs) // 2)
    reference = store(client)
    reference.apply(effs, NOW)
    assert dump(s) == dump(reference)


def expected_karma(effs: list[Effect], rules: Rules) -> int:
    """The sum of rule deltas over unique events, computed independently of Redis."""
    seen_ids, met, days, total = set(), set(), set(), 0
    for e in effs:
        if e.event_id in seen_ids:
            continue
        seen_ids.add(e.event_id)
        total += e.karma
        for name, member, _, bonus in e.sets:
            if (name, member) not in met:
                met.add((name, member))
                total += bonus
        if e.listening_day:
            days.add(e.day)
    ordered = sorted(days)
    links = sum(1 for a, b in zip(ordered, ordered[1:], strict=False) if b - a <= 1 + rules.grace_days)
    return max(rules.karma["floor"], total + links * rules.karma["streak_bonus"])


event_strategy = st.builds(
    lambda kind, day, track, dup: (kind, day, track, dup),
    st.sampled_from([Kind.PLAY_END, Kind.SKIP, Kind.LIKE, Kind.PLAYLIST_ADD, Kind.SHARE, Kind.FOLLOW_ARTIST]),
    st.integers(0, 20), st.integers(0, 30), st.booleans(),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(event_strategy, min_size=1, max_size=40), st.integers(0, 3))
def test_karma_total_is_the_sum_of_rule_deltas_over_unique_events(client, spec, penalty) -> None:  # type: ignore[no-untyped-def]
    rules = Rules.from_dict({**_rules_doc(), "karma": {**RULES.karma, "skip_penalty": penalty}})
    events = []
    for i, (kind, day, track, dup) in enumerate(spec):
        e = Interaction(event_id=uuid.UUID(int=i + 1), user_id="prop", session_id="s", kind=kind,
                        occurred_at=NOW - timedelta(days=day), track_id=CAT.track_ids[track])
        events += [e, e] if dup else [e]  # duplicates must count once
    effs = effects(events, rules)
    s = store(client, rules)
    s.apply(effs, NOW)
    assert s.profile("prop")["karma"] == expected_karma(effs, rules)
    karma = expected_karma(effs, rules)
    assert s.top("global") == ([("prop", float(karma))] if karma else [])  # 0 karma: not on the board


def _rules_doc() -> dict:
    import tomllib

    return tomllib.loads(RULES_FILE.read_text())


def _listen(user: str, day: int, **kw: object) -> Interaction:
    return Interaction(event_id=uuid.uuid4(), user_id=user, session_id="s", kind=kw.pop("kind", Kind.PLAY_END),
                       occurred_at=NOW - timedelta(days=day), track_id=kw.pop("track_id", CAT.track_ids[0]), **kw)


def test_streaks_follow_local_days_with_one_grace_day(client) -> None:  # type: ignore[no-untyped-def]
    s = store(client)
    # days 10, 9, 8 (streak 3), 6 (one missed day: grace), then 2 (gap of 3: a new streak)
    s.apply(effects([_listen("a", d) for d in (10, 9, 8, 6, 2)]), NOW)
    p = s.profile("a")
    assert p["best_streak"] == 4 and p["streak"] == 1
    assert {a["id"] for a in p["achievements"] if a["unlocked"]} >= {"streak_3"}
    # 14:00 and 16:00 UTC fall on one UTC day but two Tokyo days (23:00, then 01:00)
    late = NOW.replace(hour=16, minute=0) - timedelta(days=1)
    s.apply(effects([
        Interaction(event_id=uuid.uuid4(), user_id="tokyo", session_id="s", kind=Kind.PLAY_END, occurred_at=late,
                    track_id=CAT.track_ids[1], context={"timezone": "Asia/Tokyo"}),
        Interaction(event_id=uuid.uuid4(), user_id="tokyo", session_id="s", kind=Kind.PLAY_END,
                    occurred_at=late - timedelta(hours=2), track_id=CAT.track_ids[1], context={"timezone": "Asia/Tokyo"}),
    ]), NOW)
    assert s.profile("tokyo")["best_streak"] == 2


def test_stale_events_are_refused_and_reported(client) -> None:  # type: ignore[no-untyped-def]
    s = store(client)
    old = _listen("b", int(RULES.horizon_days) + 1)
    result = s.apply(effects([old, _listen("b", 0)]), NOW)
    assert (result.applied, result.stale) == (1, 1)
    assert s.profile("b")["stats"]["listens"] == 1


@MODES
def test_leaderboards_top_rank_around_and_ties(client, cluster) -> None:  # type: ignore[no-untyped-def]
    s = store(client, cluster=cluster)
    events = []
    for u, n in (("ann", 5), ("bob", 3), ("cat", 3), ("dan", 1), ("eve", 4)):
        events += [_listen(u, 0, track_id=CAT.track_ids[0], context={"cohort": "crew"} if u in "ann bob" else {})
                   for _ in range(n)]
    result = s.apply(effects(events), NOW)
    top = s.top("global", 5)
    assert [u for u, _ in top] == ["ann", "eve", "cat", "bob", "dan"]  # cat/bob tie: reverse id order
    assert s.rank("bob") == 4 and s.rank("nobody") is None
    assert [u for _, u, _ in s.around("cat", k=1)] == ["eve", "cat", "bob"]
    assert [u for u, _ in s.top("cohort:crew")] == ["ann", "bob"]
    genre = CAT.genre_of(0)
    assert s.top(f"genre:{genre}", 1)[0][0] == "ann"
    assert client.ttl(board_key(weekly_board(events[0].occurred_at), s.prefix)) > 0
    assert {u for u, (old, new) in result.rank_changes.items() if old is None} == {"ann", "bob", "cat", "dan", "eve"}
    # a later event moves dan up and reports the rank change
    again = s.apply(effects([_listen("dan", 0, kind=Kind.LIKE, track_id=CAT.track_ids[0]) for _ in range(3)]), NOW)
    assert again.rank_changes["dan"] == (5, 1)
    assert any(o["board"] == "global" and o["new_rank"] == 1 and o["user_id"] == "dan" for o in again.outputs)


def test_unlocks_emit_gamification_events_once(client) -> None:  # type: ignore[no-untyped-def]
    s = store(client)
    like = _listen("c", 0, kind=Kind.LIKE)
    out = s.apply(effects([like]), NOW).outputs
    assert {o["achievement_unlocked"] for o in out} >= {"first_like"}
    assert {o["avatar_unlocked"] for o in out} >= {"basic-headphones"}
    delta = next(o for o in out if o["karma_delta"])
    assert delta["karma_total"] == RULES.karma["like"] + RULES.karma["new_artist"] and delta["event_id"] == str(like.event_id)
    assert all(GamificationEvent.model_validate(o) for o in out)  # every output is a valid contract
    redelivered = s.apply(effects([like]), NOW)  # unlocked once: a redelivery re-emits the same events, no new one
    assert redelivered.applied == 0 and redelivered.outputs == out
    more = s.apply(effects([_listen("c", 0, kind=Kind.LIKE, track_id=CAT.track_ids[i]) for i in range(40)]), NOW)
    assert "bronze-vinyl" in {o["avatar_unlocked"] for o in more.outputs}
    profile = s.profile("c")
    assert profile["tier"] == "bronze" and "bronze-vinyl" in profile["avatar_items"]


def test_challenges_count_only_inside_their_window(client) -> None:  # type: ignore[no-untyped-def]
    s = store(client)
    inside = [_listen("d", 0, track_id=CAT.track_ids[i * 10]) for i in range(6)]  # new artists this week
    before = [_listen("d", 3, track_id=CAT.track_ids[i * 10 + 200]) for i in range(3)]  # Nov 21: before it
    s.apply(effects(inside + before), NOW)
    challenge = next(c for c in s.profile("d")["challenges"] if c["id"] == "explore-2026-w48")
    new_inside = len({CAT.artist_ids[i * 10] for i in range(6)})
    assert challenge["progress"] == min(new_inside, 5) and challenge["completed"] == (new_inside >= 5)


def test_skip_penalty_has_a_floor_and_the_seed_formula_is_one_config_change(client) -> None:  # type: ignore[no-untyped-def]
    doc = _rules_doc()
    doc["karma"] = {k: 0 for k in doc["karma"]} | {"listen": 2, "like": 5, "skip_penalty": 1}
    seeds = Rules.from_dict(doc)
    s = store(client, seeds)
    events = [_listen("e", 0, kind=Kind.SKIP) for _ in range(3)]  # floored at 0, not -3
    s.apply(effects(events, seeds), NOW)
    assert s.profile("e")["karma"] == 0
    events = [_listen("f", 0) for _ in range(4)] + [_listen("f", 0, kind=Kind.LIKE) for _ in range(2)] + \
             [_listen("f", 0, kind=Kind.SKIP) for _ in range(3)]
    s.apply(effects(events, seeds), NOW)
    assert s.profile("f")["karma"] == 4 * 2 + 2 * 5 - 3 * 1


@pytest.mark.parametrize("patch", [
    {"karma": {"listen": 1}},
    {"achievements": [{"id": "x", "title": "x", "stat": "no_such_stat", "target": 1}]},
    {"achievements": [{"id": "x", "title": "x", "stat": "likes", "target": 0}]},
    {"tiers": [{"name": "b", "min_karma": 10, "avatar": "b"}, {"name": "a", "min_karma": 0, "avatar": "a"}]},
    {"streaks": {"grace_days": -1}},
])
def test_invalid_rules_are_rejected(patch: dict) -> None:
    with pytest.raises(ValueError):
        Rules.from_dict({**_rules_doc(), **patch})


def test_events_without_a_rule_have_no_effect() -> None:
    for kind in (Kind.REC_REQUEST, Kind.PLAY_START, Kind.DISLIKE):
        e = Interaction(event_id=uuid.uuid4(), user_id="u", session_id="s", kind=kind, occurred_at=NOW,
                        track_id=None if kind == Kind.REC_REQUEST else "t-1")
        assert effect_for(e, RULES, CAT) is None


def test_marks_expire_a_horizon_after_their_day_and_long_streaks_are_linked(client) -> None:  # type: ignore[no-untyped-def]
    """Marks live in one set per UTC day of the events and expire `horizon` after that day
    (counted from the caller's clock). A streak longer than one read of days (64) is linked in
    full, also when its middle day arrives last."""
    rules = Rules.from_dict({**_rules_doc(), "dedupe": {"horizon_days": 400}})
    s = store(client, rules)
    days = [d for d in range(150) if not 98 <= d <= 101]  # runs of 98 and 48 days, 4 days apart
    s.apply(effects([_listen("long", d) for d in days], rules), NOW)
    assert s.profile("long")["best_streak"] == 98
    s.apply(effects([_listen("long", 99)], rules), NOW)  # links to the 98 (one missed day: grace)
    assert s.profile("long")["best_streak"] == 99
    s.apply(effects([_listen("long", 100)], rules), NOW)  # and now to the 48 as well
    assert s.profile("long")["best_streak"] == 148
    marks = list(client.scan_iter(match=f"{s.prefix}:{{long}}:m:*"))
    assert len(marks) == 148
    oldest = min(marks, key=lambda k: int(k.rsplit(b":", 1)[1]))
    day = int(oldest.rsplit(b":", 1)[1])
    want = (day + 1) * 86_400 + 400 * 86_400 - int(NOW.timestamp())
    assert want - 5 <= client.ttl(oldest) <= want


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A real three-node Redis Cluster on loopback (redis-server + redis-cli from the same
    package the Makefile installs)."""
    import shutil
    import subprocess
    import time

    from deploy.local.stack import free_port

    if not shutil.which("redis-server") or not shutil.which("redis-cli"):
        pytest.fail("redis-server / redis-cli not installed: run `make install`")
    root = tmp_path_factory.mktemp("cluster")
    procs: list[subprocess.Popen] = []

    def start_node() -> int:
        """Start one node and wait until it answers; a node that dies (its port taken in the
        meantime) is started again on another port."""
        for _ in range(5):
            port = free_port()
            node = root / str(port)
            node.mkdir()
            proc = subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no"],
                cwd=node, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(proc)
            deadline = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    redis.Redis(port=port, socket_connect_timeout=1).ping()
                    return port
                except redis.ConnectionError:
                    time.sleep(0.1)
            proc.kill()
        pytest.fail("could not start a Redis Cluster node on loopback")

    try:
        ports = [start_node() for _ in range(3)]
        subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports], "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, timeout=120)
        for _ in range(300):
            if b"cluster_state:ok" in redis.Redis(port=ports[0]).execute_command("CLUSTER INFO"):
                break
            time.sleep(0.1)
        client = redis.RedisCluster(host="127.0.0.1", port=ports[0])
        yield client
        client.close()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_a_real_redis_cluster_gives_the_same_karma_boards_and_dedupe(client, redis_cluster) -> None:  # type: ignore[no-untyped-def]
    """On Redis Cluster the store runs APPLY once per hash slot and writes the boards after it;
    the result matches one Redis, and redeliveries change nothing."""
    effs = effects(history(users=8, seed=9))
    one = store(client)
    one.apply(effs, NOW)
    spread = GamificationStore(redis_cluster, RULES, prefix=f"t{uuid.uuid4().hex[:8]}")
    assert spread.cluster
    shuffled = effs[:]
    random.Random(2).shuffle(shuffled)
    for i in range(0, len(shuffled), 30):
        spread.apply(shuffled[i:i + 30], NOW)
    again = spread.apply(effs, NOW)
    assert (again.applied, again.duplicates) == (0, len(effs))
    users = sorted({e.user_id for e in effs})
    assert [spread.profile(u) for u in users] == [one.profile(u) for u in users]
    for board in ("global", "cohort:c1", weekly_board(NOW)):
        assert spread.top(board, 20) == one.top(board, 20)
    slots = {redis_cluster.keyslot(f"{spread.prefix}:{{{u}}}:s") for u in users}
    nodes = {redis_cluster.nodes_manager.get_node_from_slot(s).name for s in slots}
    assert len(nodes) > 1  # the listeners really are spread over the nodes


def test_the_first_published_slate_of_a_rec_id_wins(client) -> None:  # type: ignore[no-untyped-def]
    from schemas.events import Recommendation, SlateItem
    from schemas.wire import Serde
    from sinks.slate_cache import SlateCache

    serde, store = Serde(), SlateCache(client, prefix=f"t{uuid.uuid4().hex[:6]}", ttl_s=60)
    now = datetime.now(UTC)

    def slate(rec_id: uuid.UUID, tracks: list[str]) -> Recommendation:
        return Recommendation(rec_id=rec_id, request_id=uuid.uuid4(), user_id="u-slate", session_id="s", items=[
            SlateItem(track_id=t, position=i, score=1.0, propensity=0.5, source="for-you", explanation="x")
            for i, t in enumerate(tracks)], slate_propensity=0.1, policy_id="linucb", policy_version="1",
            context=Interaction(event_id=uuid.uuid4(), user_id="u", session_id="s", kind=Kind.REC_REQUEST,
                                occurred_at=now).context, created_at=now)

    rec_id = uuid.uuid4()
    first, second = slate(rec_id, ["a", "b"]), slate(rec_id, ["c", "d"])
    assert store.published([("u-slate", rec_id)]) == {}
    assert store.claim([(first, serde.encode(first))]) == [None]  # stored now
    assert store.claim([(second, serde.encode(second))]) == [serde.encode(first)]  # the first stays
    assert store.published([("u-slate", rec_id), ("u-slate", uuid.uuid4())]) == {rec_id: serde.encode(first)}
    assert store.get("u-slate") is not None and 0 < client.ttl(store.rec_key("u-slate", rec_id)) <= 60
