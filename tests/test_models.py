"""Pure parts: slate sampling propensities, the popularity policy, the recommend step."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime

import numpy as np
import pytest

from agents.recommend import Recommender, listening_context
from online_models.context import ListeningContext
from online_models.policy import POLICIES, make_policy
from online_models.popularity import ContextPopularity
from online_models.slate import plackett_luce
from schemas.events import Interaction, Kind
from streams.simulator import synthetic_catalogue

CAT = synthetic_catalogue(3, 300)


def test_plackett_luce_propensities_match_observed_frequencies() -> None:
    logits = np.log(np.array([5.0, 3.0, 1.0, 1.0]))
    rng = np.random.default_rng(0)
    n = 40_000
    first: Counter[int] = Counter()
    second_after_0: Counter[int] = Counter()
    logged: dict[tuple[int, int | None], float] = {}
    for _ in range(n):
        s = plackett_luce(logits, 2, rng)
        a, b = int(s.indices[0]), int(s.indices[1])
        first[a] += 1
        logged[(a, None)] = s.propensities[0]
        if a == 0:
            second_after_0[b] += 1
            logged[(0, b)] = s.propensities[1]
        assert s.slate_propensity == pytest.approx(s.propensities[0] * s.propensities[1])
    # position 0: P(i) = w_i / sum(w)
    for i, expected in enumerate([0.5, 0.3, 0.1, 0.1]):
        assert logged[(i, None)] == pytest.approx(expected)
        assert first[i] / n == pytest.approx(expected, abs=0.01)
    # position 1 given track 0 on top: P(j) = w_j / (sum(w) - w_0)
    total = sum(second_after_0.values())
    for j, expected in zip([1, 2, 3], [0.6, 0.2, 0.2], strict=True):
        assert logged[(0, j)] == pytest.approx(expected)
        assert second_after_0[j] / total == pytest.approx(expected, abs=0.015)


def test_plackett_luce_respects_exclusions_and_small_pools() -> None:
    rng = np.random.default_rng(1)
    allowed = np.array([True, False, True])
    s = plackett_luce(np.zeros(3), 5, rng, allowed)
    assert sorted(s.indices.tolist()) == [0, 2]
    assert s.propensities.tolist() == pytest.approx([0.5, 1.0])
    assert len(plackett_luce(np.zeros(3), 2, rng, np.zeros(3, dtype=bool)).indices) == 0


def test_popularity_learns_from_positive_feedback_in_its_context() -> None:
    policy = ContextPopularity(CAT)
    workout, sleep = ListeningContext("workout", 8), ListeningContext("sleep", 2)
    before = policy.scores(workout)[42]
    for _ in range(20):
        policy.learn("play_end", 42, workout)
    assert policy.learn("skip", 42, workout) == 0.0
    assert policy.scores(workout)[42] > before
    assert policy.scores(workout)[42] > policy.scores(sleep)[42]  # context counts weigh more
    slate = policy.recommend(workout, 10, np.random.default_rng(0))
    assert 42 in [p.track_idx for p in slate.picks]
    pick = next(p for p in slate.picks if p.track_idx == 42)
    assert pick.source == "popularity:context" and "workout" in pick.explanation


def test_popularity_snapshot_round_trip() -> None:
    policy = ContextPopularity(CAT)
    policy.learn("like", 7, ListeningContext("party", 22))
    other = ContextPopularity(CAT)
    other.restore(policy.snapshot())
    ctx = ListeningContext("party", 22)
    assert np.array_equal(other.scores(ctx), policy.scores(ctx))


@pytest.mark.parametrize("bad", [{"temperature": 0}, {"prior_weight": -1}, {"context_weight": -0.1}])
def test_popularity_rejects_invalid_hyperparameters(bad: dict) -> None:
    with pytest.raises(ValueError):
        ContextPopularity(CAT, **bad)


def _event(kind: Kind, user: str = "u-1", **kw: object) -> Interaction:
    return Interaction(event_id=uuid.uuid4(), user_id=user, session_id="s", kind=kind,
                       occurred_at=datetime(2026, 11, 24, 7, 0, tzinfo=UTC),
                       context={"activity": "workout", "timezone": "Europe/Berlin"}, **kw)


def _recommender(policy: str = "linucb") -> Recommender:
    return Recommender(CAT, make_policy(policy, CAT, n_candidates=60), slate_size=10, dedupe_window=1000)


@pytest.mark.parametrize("policy", POLICIES)
def test_recommend_step_answers_requests_and_is_idempotent_by_event_id(policy: str) -> None:
    rec = _recommender(policy)
    now = datetime.now(UTC)
    request = _event(Kind.REC_REQUEST)
    (slate,) = rec.process([request], now)
    assert slate.request_id == request.event_id and slate.user_id == "u-1"
    assert len(slate.items) == 10 and len({i.track_id for i in slate.items}) == 10
    assert all(0 < i.propensity <= 1 and i.explanation for i in slate.items)
    assert slate.slate_propensity == pytest.approx(float(np.prod([i.propensity for i in slate.items])))
    # redelivery: the request is answered again under the same rec_id (the worker serves the
    # slate published first: test_batch); redelivered feedback teaches nothing
    play = _event(Kind.PLAY_END, track_id=CAT.track_ids[5])
    rec.process([play], now)
    assert [s.rec_id for s in rec.process([request], now)] == [slate.rec_id]
    state = rec.policy.snapshot()
    assert rec.process([play], now) == []
    assert rec.policy.snapshot() == state
    assert rec.duplicates == 2


def test_same_request_same_state_gives_the_same_slate() -> None:
    request = _event(Kind.REC_REQUEST)
    a = _recommender().answer(request, datetime.now(UTC))
    b = _recommender().answer(request, datetime.now(UTC))
    assert a.rec_id == b.rec_id and [i.track_id for i in a.items] == [i.track_id for i in b.items]


@pytest.mark.parametrize("policy", POLICIES)
def test_recently_played_tracks_are_not_recommended_again(policy: str) -> None:
    rec = _recommender(policy)
    played = [CAT.track_ids[i] for i in np.argsort(-CAT.popularity)[:30]]
    now = datetime.now(UTC)
    rec.process([_event(Kind.PLAY_START, track_id=t) for t in played], now)
    (slate,) = rec.process([_event(Kind.REC_REQUEST)], now)
    assert not {i.track_id for i in slate.items} & set(played)


def test_listening_context_uses_the_listeners_time_zone() -> None:
    ctx = listening_context(_event(Kind.REC_REQUEST))
    assert ctx.local_hour == 8 and ctx.activity == "workout"  # 07:00 UTC is 08:00 in Berlin
    bad_zone = _event(Kind.REC_REQUEST).model_copy(update={"context": _event(Kind.REC_REQUEST).context.model_copy(update={"timezone": "Mars/Base"})})
    assert listening_context(bad_zone).local_hour == 7


def test_unknown_tracks_are_counted_not_fatal() -> None:
    rec = _recommender()
    rec.process([_event(Kind.LIKE, track_id="not-in-catalogue")], datetime.now(UTC))
    assert rec.unknown_tracks == 1
