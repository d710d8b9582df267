"""Gamification inside the recommender: open goals as a feature, and the optional reward term."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agents.gamify import Rules
from online_models.challenges import Goal, advance, goals_from
from online_models.context import ListeningContext
from online_models.features import COLUMN, build_features
from online_models.policy import make_policy
from streams.simulator import synthetic_catalogue

CAT = synthetic_catalogue(6, 300)
RULES = Path(__file__).resolve().parent.parent / "deploy" / "config" / "gamification.toml"


def test_the_shipped_rules_give_the_goals_a_slate_can_advance() -> None:
    goals = goals_from(Rules.from_toml(RULES).achievements)
    assert {(g.stat, g.target) for g in goals} == {("genres", 5), ("new_artists", 10)}
    with pytest.raises(ValueError, match="cannot advance"):
        Goal("x", "likes", 3)


def test_a_candidate_advances_only_an_open_goal() -> None:
    goals = (Goal("scout", "new_artists", 3), Goal("hopper", "genres", 2))
    genres = np.array([1.0, 0.0, 0.0])  # finished genre 0 only
    new_artist = np.array([True, False, False])
    genre = np.array([0, 0, 2])
    assert advance(goals, 1, genres, new_artist, genre).tolist() == [1.0, 0.0, 1.0]
    assert advance(goals, 3, genres, new_artist, genre).tolist() == [0.0, 0.0, 1.0]  # scout reached
    assert advance(goals, 3, np.array([1.0, 1.0, 0.0]), new_artist, genre).tolist() == [0.0, 0.0, 0.0]


def test_the_feature_and_the_bonus_reach_the_ranker() -> None:
    goals = (Goal("scout", "new_artists", 50),)
    ctx = ListeningContext()
    plain = make_policy("linucb", CAT, goals=goals)
    paid = make_policy("linucb", CAT, goals=goals, challenge_bonus=1.0)
    for policy in (plain, paid):
        decided = policy.recommend("u-1", "s-1", ctx, 10, np.random.default_rng(0))
        X = decided.payload[0]
        assert X[:, COLUMN["challenge_advance"]].sum() == 10  # a new listener: every artist is new
        policy.learn(decided.payload, (1.0,) * 10)
    col = COLUMN["challenge_advance"]
    assert paid.ranker.b[col] > plain.ranker.b[col]  # the bonus is learned as reward on that feature
    assert make_policy("linucb", CAT).gen.goals == ()
    cands = plain.gen.generate("u-9", ctx, np.random.default_rng(1), None)
    no_goals = make_policy("linucb", CAT)
    assert not build_features(no_goals.gen, no_goals.gen.profile("u-9"), ctx, cands)[:, col].any()
    with pytest.raises(ValueError, match="challenge_bonus"):
        make_policy("linucb", CAT, challenge_bonus=-1)
