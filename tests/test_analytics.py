"""ClickHouse analytics on a real chDB store: migrations, idempotent sink, dashboard queries on
known data. (One chDB path per process: this module's store lives in the pytest process.)"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dashboard import queries as Q
from schemas.events import Interaction, Kind, Recommendation, SlateItem
from sinks.clickhouse import AnalyticsSink, ClickHouseStore, StoreUnavailable
from streams.simulator import synthetic_catalogue

pytestmark = pytest.mark.integration
CAT = synthetic_catalogue(7, 100)
T0 = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)  # a Monday


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ClickHouseStore:
    s = ClickHouseStore(f"chdb://{tmp_path_factory.mktemp('chdb')}")
    assert s.migrate() == ["V001__core_tables", "V002__aggregates", "V003__karma_event_time", "V004__events_replayable",
                          "V005__experiment_exposures", "V006__recommendation_why", "V007__events_friend"]
    assert s.migrate() == []  # versioned: applied once
    return s


def ev(user: str, kind: Kind, at: datetime, track: int = 0, **kw: Any) -> Interaction:
    return Interaction(event_id=uuid.uuid4(), user_id=user, session_id="s", occurred_at=at, kind=kind,
                       track_id=None if kind == Kind.REC_REQUEST else CAT.track_ids[track], **kw)


def n_rows(store: ClickHouseStore, table: str, user: str) -> tuple[int, int]:
    """(rows stored, rows after deduplication) of one user's rows."""
    raw = store.query(f"SELECT count() AS n FROM {table} WHERE user_id = {{u:String}}", {"u": user})[0]["n"]
    final = store.query(f"SELECT count() AS n FROM {table} FINAL WHERE user_id = {{u:String}}", {"u": user})[0]["n"]
    return int(raw), int(final)


def test_a_retried_flush_adds_nothing_and_redelivery_is_deduplicated(store) -> None:  # type: ignore[no-untyped-def]
    user = f"sink-{uuid.uuid4().hex[:6]}"
    events = [ev(user, k, T0 + timedelta(minutes=i), i % 5) for i, k in enumerate([Kind.PLAY_START, Kind.PLAY_END] * 10)]
    sink = AnalyticsSink(store, CAT)
    for _ in range(3):  # the same rows flushed again: dropped by the server (token = their event ids)
        sink.add_events(events, T0)
        assert sink.flush().rows == {"events": 20}
    assert n_rows(store, "events", user) == (20, 20)
    # redelivered in a different batch (other rows, another token): stored again, one row per event_id
    sink.add_events(events[5:15], T0)
    sink.flush()
    assert n_rows(store, "events", user)[1] == 20
    plays = store.query("SELECT sum(plays) AS p FROM track_context_hourly WHERE track_id IN {t:Array(String)} "
                        "AND hour = {h:DateTime}", {"t": [CAT.track_ids[i] for i in range(5)], "h": T0.replace(tzinfo=None)})
    assert plays[0]["p"] >= 10  # the view counts each play once, whatever was redelivered


def test_new_events_at_old_offsets_are_not_mistaken_for_duplicates(store) -> None:  # type: ignore[no-untyped-def]
    # a memory-only broker restarted hands out offsets 0.. again: tokens never come from offsets
    user = f"reset-{uuid.uuid4().hex[:6]}"
    sink = AnalyticsSink(store, CAT)
    for _ in range(2):
        sink.add_events([ev(user, Kind.LIKE, T0)], T0)
        sink.flush()
    assert n_rows(store, "events", user) == (2, 2)


def test_a_failed_flush_keeps_its_rows_and_says_it_is_transient(store, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    user = f"fail-{uuid.uuid4().hex[:6]}"
    sink = AnalyticsSink(store, CAT)
    sink.add_events([ev(user, Kind.LIKE, T0)], T0)
    real = store.client.insert

    def down(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("server went away")

    monkeypatch.setattr(store.client, "insert", down)
    with pytest.raises(StoreUnavailable, match="the batch waits and is retried"):
        sink.flush()
    assert sink.pending() == 1  # nothing lost
    monkeypatch.setattr(store.client, "insert", real)
    sink.flush()
    assert n_rows(store, "events", user) == (1, 1)


def test_events_over_101_days_are_written_and_a_refused_row_spares_its_neighbours(store) -> None:  # type: ignore[no-untyped-def]
    user = f"days-{uuid.uuid4().hex[:6]}"
    events = [ev(user, Kind.LIKE, T0 - timedelta(days=d)) for d in range(101)]  # 101 partitions
    sink = AnalyticsSink(store, CAT)
    sink.add_events(events, T0)
    bad = list(sink._rows["events"][0])
    bad[0] = "not-a-uuid"  # a row the store cannot take, whatever the retries
    sink._rows["events"].insert(50, bad)
    flushed = sink.flush()
    assert [r.identity for r in flushed.refused] == ["not-a-uuid"] and flushed.rows == {"events": 101}
    assert flushed.refused[0].error  # the store's own reason, for the dead letter
    assert n_rows(store, "events", user) == (101, 101)


@pytest.fixture(scope="module")
def fixture_data(store) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """A small known world: two listeners, one policy's slate with known outcomes, karma, boards."""
    sink = AnalyticsSink(store, CAT)
    ann, bob = "fx-ann", "fx-bob"
    events = []
    # ann: Monday 08:xx workout, 3 plays of track 0 (artist a), 1 completion, 1 like, 1 skip
    for i, kind in enumerate([Kind.PLAY_START, Kind.PLAY_END, Kind.LIKE, Kind.PLAY_START, Kind.SKIP, Kind.PLAY_START]):
        events.append(ev(ann, kind, T0 + timedelta(hours=8, minutes=i), 0, context={"activity": "workout"}))
    # bob: Tuesday 21:xx relax, plays of tracks 0 and 20 (two artists), both completed
    for i, (kind, track) in enumerate([(Kind.PLAY_START, 0), (Kind.PLAY_END, 0), (Kind.PLAY_START, 20), (Kind.PLAY_END, 20)]):
        events.append(ev(bob, kind, T0 + timedelta(days=1, hours=21, minutes=i), track, context={"activity": "relax"}))
    # ann also completes artist-of-20 once, so her graph has an edge with bob's co-listening
    events.append(ev(ann, Kind.PLAY_END, T0 + timedelta(hours=9), 20, context={"activity": "workout"}))
    # a slate for ann: 3 items; item 0 played + completed + liked, item 1 played + skipped, item 2 unplayed
    rec = Recommendation(
        rec_id=uuid.uuid4(), request_id=uuid.uuid4(), user_id=ann, session_id="s", policy_id="fx-policy",
        policy_version="1", slate_propensity=0.1, created_at=T0 + timedelta(hours=10),
        items=[SlateItem(track_id=CAT.track_ids[t], position=p, score=1.0, propensity=0.5, source="x", explanation="y",
                         why_features=["genre_affinity", "mood_match"], why_values=[0.5, -0.25])
               for p, t in enumerate([40, 41, 42])],
    )
    at = T0 + timedelta(hours=10)
    for kind, track in [(Kind.PLAY_START, 40), (Kind.PLAY_END, 40), (Kind.LIKE, 40), (Kind.PLAY_START, 41), (Kind.SKIP, 41)]:
        events.append(ev(ann, kind, at, track, rec_id=rec.rec_id, position=track - 40))
    sink.add_events(events, T0)
    sink.add_recommendations([rec])
    karma = [{"event_id": str(events[i].event_id), "user_id": ann, "karma_delta": d, "karma_total": t, "tier": "listener",
              "created_at": T0 + timedelta(hours=11)} for i, d, t in [(1, 5, 5), (2, 3, 8), (4, -1, 7)]]
    karma.append({**karma[0], "karma_delta": 0, "achievement_unlocked": "first_like"})
    sink.add_gamification(karma, events)
    sink.add_snapshot("global", [(ann, 7.0), (bob, 4.0)], T0 + timedelta(hours=12))
    sink.add_snapshot("global", [(bob, 9.0), (ann, 7.0)], T0 + timedelta(hours=13))
    sink.flush()
    return {"ann": ann, "bob": bob, "events": events}


def test_the_latest_slate_comes_back_with_why_and_the_sound_of_each_track(store, fixture_data) -> None:  # type: ignore[no-untyped-def]
    slate = Q.latest_slate(store.query, CAT, fixture_data["ann"])
    assert slate["policy_id"] == "fx-policy" and [i["position"] for i in slate["items"]] == [0, 1, 2]
    first = slate["items"][0]
    assert first["track_id"] == CAT.track_ids[40] and first["explanation"] == "y"
    assert first["why"] == [{"feature": "genre_affinity", "value": 0.5}, {"feature": "mood_match", "value": -0.25}]
    assert first["audio"]["energy"] == round(float(CAT.features[40, 1]), 3)
    assert Q.latest_slate(store.query, CAT, "nobody")["items"] == []


def test_heatmap_counts_plays_by_local_weekday_and_hour(store, fixture_data) -> None:  # type: ignore[no-untyped-def]
    ann = Q.listening_heatmap(store.query, fixture_data["ann"])
    assert ann["plays"][0][8] == 3 and ann["plays"][0][10] == 2 and sum(map(sum, ann["plays"])) == 5
    bob = Q.listening_heatmap(store.query, fixture_data["bob"])
    assert bob["plays"][1][21] == 2 and sum(map(sum, bob["plays"])) == 2


def test_activity_pattern_over_the_day(store, fixture_data) -> None:  # type: ignore[no-untyped-def]
    series = Q.activity_by_hour(store.query, fixture_data["bob"])["series"]
    assert series == {"relax": [0] * 21 + [2, 0, 0]}


def test_recommendation_rates_by_policy(store, fixture_data) -> None:  # type: ignore[no-untyped-def]
    (row,) = [r for r in Q.recommendation_rates(store.query) if r["policy"] == "fx-policy"]
    assert row["shown"] == 3 and row["played"] == 2
    assert row["completion_rate"] == 0.5 and row["skip_rate"] == 0.5 and row["like_rate"] == 0.5
    assert row["play_rate"] == pytest.approx(2 / 3)


def test_top_tracks_and_rising_artists(store, fixture_data) -> None:  # type: ignore[no-untyped-def]
    top = {r["track_id"]: r for r in Q.top_tracks(store.query, n=100, hours=24 * 30)}
    assert top[CAT.track_ids[0]]["completions"] >= 2 and top[CAT.track_ids[41]]["skips"] >= 1
    rising = Q.rising_artists(store.query, n=100, hours=24 * 30)
    assert all(r["recent"] > 0 for r in rising)


def test_karma_progression_and_unlocks(store, fixture_data) -> None:  # type: ignore[no-untyped-def]
    rows = Q.karma_progression(store.query, fixture_data["ann"])
    assert [r["karma"] for r in rows] == [5, 8, 7]
    assert rows[0]["at"] == fixture_data["events"][1].occurred_at.replace(tzinfo=None)  # the listener's time
    assert [u["what"] for u in Q.unlocks(store.query, fixture_data["ann"])] == ["achievement:first_like"]


def test_leaderboard_history_follows_the_latest_leaders(store, fixture_data) -> None:  # type: ignore[no-untyped-def]
    hist = Q.leaderboard_history(store.query, "global", top=2)["series"]
    assert hist[fixture_data["bob"]]["score"] == [4.0, 9.0] and hist[fixture_data["bob"]]["rank"] == [2, 1]
    assert hist[fixture_data["ann"]]["rank"] == [1, 2]


def test_artist_graph_links_artists_by_co_listening(store, fixture_data) -> None:  # type: ignore[no-untyped-def]
    graph = Q.artist_graph(store.query, fixture_data["ann"])
    a0, a20 = CAT.artist_ids[0], CAT.artist_ids[20]
    assert {n["id"] for n in graph["nodes"]} >= {a0, a20}
    edge = next(e for e in graph["edges"] if {e["source"], e["target"]} == {a0, a20})
    assert edge["weight"] == 2 and 0 < edge["jaccard"] <= 1  # ann and bob both completed both artists
    assert all({"x", "y", "community"} <= set(n) for n in graph["nodes"])
    assert graph == Q.artist_graph(store.query, fixture_data["ann"])  # seeded: the same picture again
    assert Q.artist_graph(store.query, "nobody") == {"nodes": [], "edges": []}


def test_track_map_is_a_pca_of_the_audio_features(store, fixture_data) -> None:  # type: ignore[no-untyped-def]
    m = Q.track_map(store.query, CAT, fixture_data["ann"])
    assert len(m["tracks"]) == len(CAT) and m["method"] == "pca"
    assert 0 < m["explained_variance"][1] <= m["explained_variance"][0] < 1
    assert any(t["finished"] for t in m["tracks"]) and not all(t["finished"] for t in m["tracks"])
    assert len(Q.track_map(store.query, CAT, None, "tsne", limit=60)["tracks"]) == 60
    with pytest.raises(ValueError, match="pca or tsne"):
        Q.track_map(store.query, CAT, None, "umap")


def test_throughput_and_listeners(store, fixture_data) -> None:  # type: ignore[no-untyped-def]
    assert sum(r["events_per_s"] for r in Q.throughput(store.query)) > 0
    assert set(Q.listeners(store.query, 200)) >= {fixture_data["ann"], fixture_data["bob"]}


def test_gamification_state_lost_in_redis_is_noticed_and_rebuilt_from_the_events(store, settings) -> None:  # type: ignore[no-untyped-def]
    import redis

    from agents.gamify import Rules
    from agents.rebuild import rebuild
    from sinks.gamification import GamificationStore
    from tests.test_gamification import CAT as GAME_CAT
    from tests.test_gamification import dump, effects, history

    game = GamificationStore(redis.Redis.from_url(settings.redis_url), Rules.from_toml(settings.gamification_rules),
                             prefix=f"rb{uuid.uuid4().hex[:8]}")
    game.ensure_generation(fresh=True)
    events = history(users=5, days=6, seed=4)
    sink = AnalyticsSink(store, GAME_CAT)
    sink.add_events(events, T0)
    sink.flush()
    game.apply(effects(events), max(e.occurred_at for e in events))
    truth = dump(game)
    assert game.check_generation() is None
    game.reset()  # Redis restarted without its append-only file (only this store's keys: the session shares Redis)
    assert "lost" in (game.check_generation() or "")
    assert "lost" in (game.check_generation() or "")  # and stays reported until rebuilt
    # the analytics store also holds other tests' events: the rebuild replays them too, under this prefix
    counts = rebuild(store, game, GAME_CAT)
    assert counts["applied"] >= len(effects(events))
    mine = {k: v for k, v in dump(game).items() if any(f"{{u{u}}}".encode() in k for u in range(5))}
    assert mine == {k: v for k, v in truth.items() if any(f"{{u{u}}}".encode() in k for u in range(5))}
    assert game.check_generation() is None


def test_an_experiment_report_from_known_exposures_and_events(store) -> None:  # type: ignore[no-untyped-def]
    """Listeners exposed on day 0: arm b listens more and comes back on day 1; arm a does not.
    Events before exposure count only as the CUPED covariate; a second exposure row (written
    again after a restart) does not move the first."""
    from experiments.report import analyse, experiments_seen, listener_frame

    sink = AnalyticsSink(store, CAT)
    exp, t = "rep-exp", T0 + timedelta(days=30)
    exposures, events = [], []
    for i in range(40):
        arm, user = ("a", "b")[i % 2], f"rep-{i}"
        first = uuid.uuid4()
        exposures.append([first, exp, arm, user, t + timedelta(minutes=i)])
        exposures.append([uuid.uuid4(), exp, arm, user, t + timedelta(hours=5)])  # again, later: ignored
        def ev(kind: Kind, at: datetime, ms: int | None = None, user: str = user, i: int = i) -> Interaction:  # noqa: E306
            return Interaction(event_id=uuid.uuid4(), user_id=user, session_id=f"s-{user}-{at.day}", kind=kind,
                               track_id=CAT.track_ids[i % 10], occurred_at=at, listened_ms=ms)
        events.append(ev(Kind.PLAY_END, t - timedelta(days=1), 60_000 * (1 + i % 5)))  # before: CUPED only
        minutes = 3 if arm == "a" else 6
        events.append(ev(Kind.PLAY_END, t + timedelta(minutes=i + 1), 60_000 * minutes + 1000 * (i % 7)))
        events.append(ev(Kind.SKIP, t + timedelta(minutes=i + 2), 10_000))
        if arm == "b" or i % 8 == 0:  # b returns the next day; a few of a too
            events.append(ev(Kind.PLAY_END, t + timedelta(days=1, hours=2), 60_000))
    events.append(Interaction(event_id=uuid.uuid4(), user_id="rep-late", session_id="x", kind=Kind.PLAY_START,
                              track_id=CAT.track_ids[0], occurred_at=t + timedelta(days=2)))  # data reach day 2
    sink.add_rows("experiment_exposures", exposures)
    sink.add_events(events, t)
    sink.flush()
    df = listener_frame(store.query, exp).set_index("user_id")
    assert len(df) == 40 and set(df["arm"]) == {"a", "b"}
    assert df.loc["rep-1", "exposed_at"] == t + timedelta(minutes=1)  # the first exposure
    assert df.loc["rep-0", "plays"] == 3 and df.loc["rep-0", "skips"] == 1
    assert df.loc["rep-0", "minutes_before"] == pytest.approx(1.0)
    assert df.loc["rep-1", "returned_d1"] == 1 and df.loc["rep-2", "returned_d1"] == 0
    got = analyse(store.query, exp, primary="minutes", guardrails=("skip_rate",))
    minutes = next(r for r in got.results if r.metric == "minutes" and r.test == "welch t")
    assert minutes.extra["arm"] == "b" and minutes.lift > 0.5 and minutes.p_value < 1e-6
    d1 = next(r for r in got.results if r.metric == "returned_d1")
    assert d1.treatment == 1.0 and d1.control == pytest.approx(5 / 20) and d1.p_value < 1e-4  # i = 0, 8, .., 32
    assert "b raises minutes" in got.verdict and not got.srm.mismatch and "skip_rate" not in got.verdict
    assert "skips / plays" in got.guardrails and "GUARDRAIL BREACHED" not in got.verdict
    assert {(r["experiment"], r["arm"]) for r in experiments_seen(store.query)} >= {(exp, "a"), (exp, "b")}
