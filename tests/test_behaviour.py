"""Behaviour online: session clusters (river k-means) and taste shifts (river ADWIN), and the
simulator's taste shifts they are checked against."""

from __future__ import annotations

import numpy as np
import pytest

from online_models.behaviour import Behaviour
from online_models.context import ListeningContext
from online_models.policy import make_policy
from streams.simulator import World, synthetic_catalogue

CAT = synthetic_catalogue(3, 300)


def session(b: Behaviour, state, sid: str, ctx: ListeningContext, plays: int, skip: float,
            rng: np.random.Generator) -> None:
    for _ in range(plays):
        b.observe(state, sid, "play_start", int(rng.integers(12)), ctx)
        b.observe(state, sid, "skip" if rng.random() < skip else "play_end", 0, ctx)


def test_two_kinds_of_session_fall_in_two_clusters() -> None:
    b = Behaviour(n_clusters=2, seed=1)
    rng = np.random.default_rng(0)
    night = ListeningContext(activity="workout", local_hour=23)
    morning = ListeningContext(activity="focus", local_hour=8)
    skippers = [b.new_state() for _ in range(20)]
    listeners = [b.new_state() for _ in range(20)]
    for k in range(12):
        for i, st in enumerate(skippers):
            session(b, st, f"n-{i}-{k}", night, 3, 0.9, rng)
        for i, st in enumerate(listeners):
            session(b, st, f"m-{i}-{k}", morning, 15, 0.05, rng)
    a = {st.cluster for st in skippers}
    c = {st.cluster for st in listeners}
    assert len(a) == 1 and len(c) == 1 and a != c
    words = b.describe(a.pop())
    assert "workout" in words and "skips a lot" in words
    assert b.describe(-1).startswith("not clustered yet")
    assert sum(b.sizes) == 40 * 11  # each session counted once, when the next one starts


def test_adwin_flags_a_drop_in_completions_and_the_policy_fades_the_profile() -> None:
    rng = np.random.default_rng(2)
    b = Behaviour()
    steady, shifted = b.new_state(), b.new_state()
    ctx = ListeningContext()
    flags_steady = flags_shifted = 0
    for i in range(600):
        flags_steady += b.observe(steady, "s", "play_end" if rng.random() < 0.7 else "skip", 0, ctx)
        p = 0.75 if i < 300 else 0.2
        flags_shifted += b.observe(shifted, "s", "play_end" if rng.random() < p else "skip", 0, ctx)
    assert flags_steady == 0
    assert flags_shifted >= 1 and shifted.shifts == flags_shifted

    policy = make_policy("linucb", CAT, fade_on_shift=0.25)
    for i in range(300):  # a listener who finished everything, then skips everything
        kind = "play_end" if i < 150 else "skip"
        policy.observe("u-1", "s-1", "play_start", i % 50, ctx)
        policy.observe("u-1", "s-1", kind, i % 50, ctx)
    prof = policy.gen.profile("u-1")
    assert prof.behaviour.shifts >= 1
    assert prof.genre_pos.sum() < 0.5 * 150  # what they finished before the shift weighs a quarter now
    with pytest.raises(ValueError, match="fade_on_shift"):
        make_policy("linucb", CAT, fade_on_shift=1.5)


def test_behaviour_survives_the_policy_snapshot() -> None:
    policy = make_policy("linucb", CAT)
    ctx = ListeningContext()
    for k in range(8):  # eight sessions of four plays, half skipped
        for i in range(4):
            policy.observe("u-2", f"s{k}", "play_start", i, ctx)
            policy.observe("u-2", f"s{k}", "skip" if i % 2 else "play_end", i, ctx)
    again = make_policy("linucb", CAT)
    again.restore(policy.snapshot())
    assert sum(again.behaviour.sizes) == sum(policy.behaviour.sizes) == 7
    assert again.gen.profile("u-2").behaviour.cluster == policy.gen.profile("u-2").behaviour.cluster >= 0


def test_the_world_shifts_the_tastes_of_the_share_it_is_asked_to() -> None:
    world = World(CAT, n_listeners=40, seed=4, communities=4)
    before = {u.user_id: u.genre_taste.copy() for u in world.listeners}
    moved = world.shift_tastes(0.25, seed=1)
    assert len(moved) == 10
    changed = [u.user_id for u in world.listeners if not np.allclose(u.genre_taste, before[u.user_id])]
    assert sorted(changed) == sorted(moved)
    with pytest.raises(ValueError, match="share"):
        world.shift_tastes(2.0)
