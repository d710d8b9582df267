"""The synthetic world: seeded, and reacting according to hidden tastes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import numpy as np
import pytest

from schemas.events import Kind
from streams.simulator import World, synthetic_catalogue

START = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def _play(seed: int) -> list[tuple[str, str | None, str]]:
    world = World(synthetic_catalogue(5, 400), n_listeners=20, seed=seed)
    out = []
    for listener in world.listeners[:5]:
        session = world.start_session(listener, START)
        req = world.request(session)
        events = world.react(session, uuid.uuid5(uuid.NAMESPACE_DNS, str(req.event_id)), list(world.catalogue.track_ids[:10]))
        out += [(str(e.event_id), e.track_id, str(e.kind)) for e in [req, *events]]
    return out


def test_same_seed_same_world_and_reactions() -> None:
    assert _play(3) == _play(3)
    assert _play(3) != _play(4)


def test_catalogue_is_reproducible_and_skewed() -> None:
    a, b = synthetic_catalogue(9, 1000), synthetic_catalogue(9, 1000)
    assert a.track_ids == b.track_ids and np.array_equal(a.features, b.features)
    top_decile = np.sort(a.popularity)[-100:].sum() / a.popularity.sum()
    assert top_decile > 0.3  # popularity is long-tailed
    with pytest.raises(ValueError):
        synthetic_catalogue(1, 0)


def test_listeners_complete_tracks_that_fit_them_more_often() -> None:
    world = World(synthetic_catalogue(5, 400), n_listeners=50, seed=1)
    good, bad = [], []
    for listener in world.listeners:
        session = world.start_session(listener, START)
        p = world.completion_prob(listener, session.activity)
        best, worst = np.argsort(-p)[:5], np.argsort(p)[:5]
        for idx, sink in ((best, good), (worst, bad)):
            s = world.start_session(listener, START)
            s.activity = session.activity
            events = world.react(s, uuid.uuid4(), [world.catalogue.track_ids[i] for i in idx])
            sink.extend(e.kind == Kind.PLAY_END for e in events if e.kind in (Kind.PLAY_END, Kind.SKIP))
    assert np.mean(good) > np.mean(bad) + 0.3


def test_oracle_is_the_best_track_and_events_answer_the_slate() -> None:
    world = World(synthetic_catalogue(5, 400), n_listeners=5, seed=2)
    listener = world.listeners[0]
    best, p_best = world.oracle(listener, "workout")
    assert p_best == pytest.approx(world.completion_prob(listener, "workout").max())
    session = world.start_session(listener, START)
    rec_id = uuid.uuid4()
    events = world.react(session, rec_id, list(world.catalogue.track_ids[:10]))
    assert events and all(e.rec_id == rec_id and e.position is not None for e in events)
    assert [e.occurred_at for e in events] == sorted(e.occurred_at for e in events)


def test_listeners_listen_mostly_around_their_peak_hour() -> None:
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    world = World(synthetic_catalogue(5, 100), n_listeners=30, seed=4)
    near = far = near_n = far_n = 0
    for listener in world.listeners:
        for h in range(0, 24 * 20):
            at = START + timedelta(hours=h)
            local = at.astimezone(ZoneInfo(listener.zone)).hour
            d = min(abs(local - listener.peak_hour), 24 - abs(local - listener.peak_hour))
            if d <= 1:
                near_n += 1
                near += world.wants_to_listen(listener, at)
            elif d >= 6:
                far_n += 1
                far += world.wants_to_listen(listener, at)
    assert near / near_n > 0.8 and far / far_n < 0.2


def test_run_id_changes_event_ids_but_not_behaviour() -> None:
    def play(run_id: str) -> list[tuple[str, str | None, str]]:
        world = World(synthetic_catalogue(5, 200), n_listeners=3, seed=8, run_id=run_id)
        session = world.start_session(world.listeners[0], START)
        events = [world.request(session), *world.react(session, uuid.uuid4(), list(world.catalogue.track_ids[:10]))]
        return [(str(e.event_id), e.track_id, str(e.kind)) for e in events]

    a, b, a_again = play("run-a"), play("run-b"), play("run-a")
    assert a == a_again
    assert [x[1:] for x in a] == [x[1:] for x in b]
    assert not {x[0] for x in a} & {x[0] for x in b}


def test_affinity_parts_sum_to_the_affinity() -> None:
    world = World(synthetic_catalogue(5, 400), n_listeners=5, seed=3)
    for listener in world.listeners:
        for activity in ("workout", "sleep", "unknown"):
            parts = world.affinity_parts(listener, activity)
            assert set(parts) == {"population", "sound_shift", "genre", "favourites", "temper", "mood"}
            assert np.allclose(sum(parts.values()), world.affinity(listener, activity))
            assert not parts["mood"].any()  # no mood: nothing moves
            calm = np.array([0.0, -0.2, -0.1, 0.0, 0.0])
            moody = world.affinity_parts(listener, activity, calm)
            assert np.allclose(sum(moody.values()), world.affinity(listener, activity, calm))
            quiet = world.catalogue.features[:, 1] < 0.3  # low-energy tracks gain in a calm mood
            assert moody["mood"][quiet].mean() > moody["mood"][~quiet].mean()
    # the population part is the same for every listener; the others are not
    a, b = world.listeners[:2]
    assert np.array_equal(world.affinity_parts(a, "party")["population"], world.affinity_parts(b, "party")["population"])
    assert not np.allclose(world.affinity_parts(a, "party")["genre"], world.affinity_parts(b, "party")["genre"])


def test_taste_communities_share_genre_tastes_and_favourites() -> None:
    cat = synthetic_catalogue(5, 400)
    world = World(cat, n_listeners=120, seed=6, communities=4)
    taste = np.array([listener.genre_taste for listener in world.listeners])
    community = np.array(world.community)
    corr = np.corrcoef(taste)
    same = (community[:, None] == community[None, :]) & ~np.eye(len(taste), dtype=bool)
    assert corr[same].mean() > corr[~same & ~np.eye(len(taste), dtype=bool)].mean() + 0.3
    members = [lst for lst, c in zip(world.listeners, community, strict=True) if c == community[0]]
    shared = set.intersection(*(set(m.favourite_artists) for m in members[:2]))
    assert all(len(m.favourite_artists) == 5 for m in members) and members[0].favourite_artists != members[1].favourite_artists
    assert len(shared) >= 1  # three of five favourites come from the community's eight
    # communities=0 is the world of independent tastes, drawn exactly as before the option existed
    plain, zero = World(cat, n_listeners=10, seed=6), World(cat, n_listeners=10, seed=6, communities=0)
    assert [sorted(p.favourite_artists) for p in plain.listeners] == [sorted(z.favourite_artists) for z in zero.listeners]
    assert plain.community == [] and np.array_equal(plain.listeners[3].genre_taste, zero.listeners[3].genre_taste)
    with pytest.raises(ValueError, match="communities"):
        World(cat, n_listeners=3, communities=-1)
