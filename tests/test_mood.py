"""Mood: the session's lean from what is finished against what is played, in the features, the
candidates and the explanations; the simulator's hidden session moods."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from online_models import mood
from online_models.context import ListeningContext
from online_models.features import COLUMN, build_features
from online_models.policy import make_policy
from streams.simulator import World, synthetic_catalogue

CAT = synthetic_catalogue(4, 400)
ENERGY = 1


def test_finishing_the_quiet_tracks_and_skipping_the_loud_leans_calmer() -> None:
    quiet, loud = np.array([0.5, 0.2, 0.5, 0.5, 0.5]), np.array([0.5, 0.9, 0.5, 0.5, 0.5])
    m = None
    for _ in range(3):
        m = mood.observe(m, "s1", "play_end", quiet)
        m = mood.observe(m, "s1", "skip", loud)
    assert m.offset[ENERGY] < -0.1 and abs(m.offset[0]) < 1e-12  # tempo did not differ: no lean
    assert mood.phrase(m.offset) == "something calmer"
    assert mood.phrase(-m.offset) == "something livelier"
    only_finishes = mood.observe(None, "s2", "play_end", loud)
    assert not only_finishes.offset.any()  # no contrast yet: nothing to say
    assert mood.observe(m, "s3", "skip", loud).n == 1  # a new session starts over


def test_the_policy_scores_explains_and_forgets_the_session_mood() -> None:
    policy = make_policy("linucb", CAT)
    ctx = ListeningContext(activity="relax", local_hour=21)
    energy = CAT.features[:, ENERGY]
    calm, lively = np.argsort(energy)[:20], np.argsort(energy)[-20:]
    for a, b in zip(calm, lively, strict=True):
        for kind, t in (("play_end", a), ("skip", b)):
            policy.observe("u-1", "s-1", "play_start", int(t), ctx)
            policy.observe("u-1", "s-1", kind, int(t), ctx)
    prof = policy.gen.profile("u-1")
    assert prof.mood.offset[ENERGY] < -mood.CLEAR
    cands = policy.gen.generate("u-1", ctx, np.random.default_rng(0), None)
    X = build_features(policy.gen, prof, ctx, cands)
    match = X[:, COLUMN["mood_match"]]
    assert np.corrcoef(match, -CAT.features[cands.idx, ENERGY])[0, 1] > 0.5  # calmer candidates match
    policy.ranker.b[COLUMN["mood_match"]] = 50.0  # a model that learned to follow the mood
    policy.ranker._theta = None
    slate = policy.recommend("u-1", "s-1", ctx, 10, np.random.default_rng(1)).slate
    said = [p.explanation for p in slate.picks if p.explanation.startswith("something calmer")]
    assert said and all("relax" in s for s in said)
    policy.recommend("u-1", "s-2", ctx, 10, np.random.default_rng(2))  # the next session
    assert prof.mood is None


def test_the_world_hides_a_mood_per_session_only_when_asked() -> None:
    at = datetime(2026, 3, 2, 20, tzinfo=UTC)
    plain = World(CAT, n_listeners=3, seed=5)
    assert plain.start_session(plain.listeners[0], at).mood is None
    moody = World(CAT, n_listeners=3, seed=5, mood_sd=0.2)
    moods = np.array([moody.start_session(moody.listeners[0], at).mood for _ in range(200)])
    assert np.allclose(moods[:, 3:], 0) and 0.15 < moods[:, :3].std() < 0.25
