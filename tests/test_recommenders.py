"""Pure parts of the recommenders: candidate generators, slate rules and explanations, reward
mapping and join (late, duplicate, out-of-order feedback), the session DQN, and learning in a
short closed loop against the simulator."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from bench.closed_loop import run
from online_models.candidates import SOURCES, CandidateGenerator, FriendTracks
from online_models.context import ListeningContext
from online_models.features import FEATURE_NAMES, N_FEATURES, build_features
from online_models.policy import POLICIES, make_policy
from online_models.reward import Decision, Feedback, RecentIds, RewardJoin, RewardMapping
from online_models.rl import SessionDQN, SessionState
from online_models.slate import SlateRules
from streams.simulator import synthetic_catalogue

CAT = synthetic_catalogue(4, 400)
WORKOUT = ListeningContext("workout", 8, 1, "mobile")
T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)


def _taught(gen: CandidateGenerator, user: str = "u-1") -> None:
    """A listener who finishes and likes a few tracks in two sessions."""
    for s, tracks in (("s1", [3, 8, 21, 40]), ("s2", [8, 21, 57])):
        for t in tracks:
            for kind in ("play_start", "play_end", "like"):
                gen.observe(user, s, kind, t, WORKOUT)
    gen.observe(user, "s2", "play_start", 99, WORKOUT)
    gen.observe(user, "s2", "skip", 99, WORKOUT)
    for t in (8, 150, 151):  # another listener who shares a favourite: collaborative candidates
        gen.observe("u-other", "s9", "play_end", t, WORKOUT)


def test_every_generator_contributes_and_candidates_carry_source_and_anchor() -> None:
    gen = CandidateGenerator(CAT, n_candidates=120)
    _taught(gen)
    far = np.argsort(gen.content_scores(gen.profile("u-1"), WORKOUT))[:2]  # not what the other sources pick
    gen.social = {"u-1": FriendTracks(far[[0, 1, 0]], np.array([0, 0, 1]), ("bea", "cy"))}
    exclude = np.array([3, 8, 21])
    c = gen.generate("u-1", WORKOUT, np.random.default_rng(0), exclude,
                     model=lambda every: every.scores["content"] + every.scores["again"])
    assert len(c) == 120 and len(set(c.idx.tolist())) == 120
    assert not set(exclude.tolist()) & set(c.idx.tolist())
    assert {SOURCES[s] for s in c.source} == set(SOURCES)
    co = c.source == SOURCES.index("co-listen")
    assert set(c.anchor[co].tolist()) <= {3, 8, 21, 40, 57}  # "because you liked X": X was liked
    assert {150, 151} <= set(c.idx[co].tolist())  # what the other listener finished next to track 8
    friends = c.source == SOURCES.index("friends")
    assert dict(zip(c.idx[friends].tolist(), c.anchor[friends].tolist(), strict=True)) == {far[0]: 0, far[1]: 0}
    assert c.idx[friends][0] == far[0]  # finished by two friends: first
    again = c.idx[c.source == SOURCES.index("again")]
    assert set(again.tolist()) <= {40, 57}  # finished before and not recently played
    X = build_features(gen, gen.profile("u-1"), WORKOUT, c)
    assert X.shape == (120, N_FEATURES) == (120, len(FEATURES_OK)) and np.isfinite(X).all()


FEATURES_OK = FEATURE_NAMES
assert N_FEATURES >= 32


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "random"])
def test_slates_obey_rules_and_explain_every_item(policy: str) -> None:
    model = make_policy(policy, CAT, rules=SlateRules(artist_cap=1, discovery_share=0.3), n_candidates=100)
    rng = np.random.default_rng(1)
    for t in range(0, 60, 3):
        model.observe("u-1", "s1", "play_start", t, WORKOUT)
        model.observe("u-1", "s1", "play_end", t, WORKOUT)
    decided = model.recommend("u-1", "s1", WORKOUT, 10, rng, np.arange(0, 60, 3))
    picks = decided.slate.picks
    artists = [CAT.artist_ids[p.track_idx] for p in picks]
    assert len(picks) == 10 and len(set(artists)) == 10  # cap of one per artist
    assert all(0 < p.propensity <= 1 and p.explanation for p in picks)
    assert not {p.track_idx for p in picks} & set(range(0, 60, 3))
    if policy != "popularity":
        disc = SlateRules(discovery_share=0.3).discovery_positions(10)
        played_artists = {model.gen.artist_of[t] for t in range(0, 60, 3)}
        assert all(model.gen.artist_of[picks[i].track_idx] not in played_artists or model.gen.gem[picks[i].track_idx]
                   for i in disc)
        assert decided.slate.slate_propensity == pytest.approx(float(np.prod([p.propensity for p in picks])))


def test_explanations_name_their_anchor() -> None:
    model = make_policy("linucb", CAT, n_candidates=150)
    _taught(model.gen)
    picks = model.recommend("u-1", "s3", WORKOUT, 10, np.random.default_rng(2)).slate.picks
    for p in picks:
        if p.source == "co-listen":
            assert p.explanation.startswith("because you liked t-")
        if p.source == "artist":
            assert p.explanation.startswith("new artist close to a-")
        if p.source == "popularity":
            assert "workout" in p.explanation


def test_why_this_track_contributions_are_exact_for_the_linear_policy() -> None:
    model = make_policy("linucb", CAT, n_candidates=150)
    _taught(model.gen)
    rng = np.random.default_rng(4)
    X = rng.normal(size=(5, N_FEATURES))
    model.ranker.update(X, rng.random(5))  # a model with weights everywhere
    offset = rng.normal(size=5)
    full = model.contributions(X, offset, top=N_FEATURES + 1)
    assert np.allclose([sum(values) for _, values in full], X @ model.ranker.theta + offset, atol=1e-3)
    picks = model.recommend("u-1", "s3", WORKOUT, 10, np.random.default_rng(2)).slate.picks
    for p in picks:
        names, values = p.why
        assert len(names) == len(values) == 3
        assert all(f in FEATURE_NAMES or f == "listener_layer" for f in names)
        assert [abs(v) for v in values] == sorted((abs(v) for v in values), reverse=True)  # largest share first
    dqn = make_policy("session-dqn", CAT, n_candidates=150)
    assert all(p.why == ([], []) for p in dqn.recommend("u-1", "s3", WORKOUT, 10, np.random.default_rng(2)).slate.picks)


def test_listener_layer_learns_the_whole_listener_offset_by_backfitting() -> None:
    """Residuals come back measured against the full prediction (shared model + layer). The
    layer must converge to the listener's whole offset, split between genre and artist parts,
    not to half of it (what summing those residuals as if they were raw would give)."""
    gen = CandidateGenerator(CAT, n_candidates=50)
    tracks = np.flatnonzero(gen.artist_of == gen.artist_of[0])[:2]  # one artist, so one genre
    true_offset = 0.4
    for _ in range(300):  # the shared model predicts 0; the listener's reward is 0.4 higher
        offset, _ = gen.listener_layer("u-1", tracks)
        gen.learn_residuals("u-1", tracks, true_offset - offset)
    learned, _ = gen.listener_layer("u-1", tracks)
    assert learned == pytest.approx([true_offset, true_offset], abs=0.01)
    other_genre = np.flatnonzero(CAT.genre_idx != CAT.genre_idx[tracks[0]])[:1]
    assert gen.listener_layer("u-1", other_genre)[0] == pytest.approx([0.0])


def test_reward_mapping_is_configurable_and_refuses_unknown_keys(tmp_path: Path) -> None:
    m = RewardMapping()
    assert m.of("skip", 5_000) == -0.5 and m.of("skip", 90_000) == -0.1
    assert m.of("play_end") == 1.0 and m.of("thumbs_down") == -1.0 and m.of("play_start") is None
    assert m.clip(3.5) == 2.0
    path = tmp_path / "r.toml"
    path.write_text("completion = 2.0\nearly_skip = -2\n")
    assert RewardMapping.from_toml(path).of("play_end") == 2.0
    path.write_text("complete = 2.0\n")
    with pytest.raises(ValueError, match="unknown reward keys"):
        RewardMapping.from_toml(path)
    with pytest.raises(FileNotFoundError, match="ENCORE_REWARDS_FILE"):
        RewardMapping.from_toml(tmp_path / "missing.toml")


def _fb(rec: uuid.UUID, user: str, track: str, kind: str, at: datetime, **kw: object) -> Feedback:
    return Feedback(uuid.uuid4(), rec, user, track, kind, at, **kw)  # type: ignore[arg-type]


def test_join_handles_duplicate_out_of_order_late_and_missing_feedback() -> None:
    join = RewardJoin(window_s=60)
    tracks = ("t0", "t1", "t2", "t3")
    rec, other = uuid.uuid4(), uuid.uuid4()
    early = _fb(rec, "ann", "t2", "thumbs_down", T0 + timedelta(seconds=5))
    assert join.feedback(early, T0) and join.stats.early == 1  # before its decision: waits
    join.decide(Decision(rec, "ann", T0, tracks, "p"), T0)
    done = _fb(rec, "ann", "t0", "play_end", T0 + timedelta(seconds=3), position=0)
    assert join.feedback(done, T0) and not join.feedback(done, T0)  # duplicate event id
    assert join.feedback(_fb(rec, "ann", "t0", "like", T0 + timedelta(seconds=4)), T0)
    assert not join.feedback(_fb(rec, "ann", "zz", "like", T0), T0)  # not in the slate
    join.decide(Decision(other, "bob", T0, tracks, "p"), T0)
    assert join.close_due(T0 + timedelta(seconds=30)) == []  # nothing due yet
    # ann's clock passes her window (a later request): her decision closes, bob's does not
    join.decide(Decision(uuid.uuid4(), "ann", T0 + timedelta(seconds=90), tracks, "p"), T0 + timedelta(seconds=31))
    (closed,) = join.close_due(T0 + timedelta(seconds=31))
    assert closed.decision.rec_id == rec
    assert closed.rewards == (2.0, 0.0, -1.0, None)  # like+completion; reached, no feedback: default; cascade
    assert not join.feedback(_fb(rec, "ann", "t1", "like", T0 + timedelta(seconds=6)), T0) and join.stats.late == 1
    # bob went quiet: processing time closes his decision with nothing learned
    (quiet, *_) = join.close_due(T0 + timedelta(seconds=61))
    assert quiet.decision.rec_id == other and quiet.rewards == (None,) * 4
    assert join.stats.duplicates == 1 and join.stats.unmatched_track == 1


def test_id_window_forgets_the_oldest_and_survives_a_snapshot() -> None:
    ids = [uuid.uuid4() for _ in range(5)]
    window = RecentIds(3)
    assert all(window.add(u) for u in ids) and not window.add(ids[-1])
    assert len(window) == 3 and ids[0] not in window and ids[2] in window
    again = RecentIds.from_bytes(3, window.to_bytes())
    assert [u in again for u in ids] == [False, False, True, True, True]
    assert len(RecentIds.from_bytes(3, window.to_bytes(last=2))) == 2


def test_a_duplicate_is_caught_by_its_decision_after_a_move_and_a_snapshot() -> None:
    """Feedback ids are kept with their decision, so they move with it (export / import, as when
    a partition changes hands) and survive a snapshot; memory is bounded by open decisions."""
    a, b = RewardJoin(window_s=60), RewardJoin(window_s=60)
    rec = uuid.uuid4()
    a.decide(Decision(rec, "ann", T0, ("t0", "t1"), "p"), T0)
    done = _fb(rec, "ann", "t0", "play_end", T0, position=0)
    assert a.feedback(done, T0)
    b.import_users(a.export_users({"ann"}), T0)
    c = RewardJoin(window_s=60)
    c.restore(b.snapshot())
    assert not c.feedback(done, T0) and c.stats.duplicates == 1
    early = _fb(uuid.uuid4(), "bob", "t0", "like", T0)
    assert c.feedback(early, T0) and not c.feedback(early, T0)  # waiting for its decision: still one
    (closed,) = c.close_due(all_open=True)
    assert closed.rewards == (1.0, None)


def test_join_is_order_independent_within_the_window() -> None:
    events = [("t0", "play_end", 1), ("t1", "skip", 2), ("t2", "like", 3), ("t2", "play_end", 4)]
    results = set()
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]):
        join, rec = RewardJoin(window_s=60), uuid.UUID(int=7)
        join.decide(Decision(rec, "u", T0, ("t0", "t1", "t2"), "p"), T0)
        for i in order:
            track, kind, s = events[i]
            join.feedback(Feedback(uuid.UUID(int=100 + i), rec, "u", track, kind, T0 + timedelta(seconds=s), 5_000),
                          T0)
        results.add(join.close_due(all_open=True)[0].rewards)
    assert results == {(1.0, -0.5, 2.0)}


def test_join_rejects_a_bad_window_and_snapshots() -> None:
    with pytest.raises(ValueError):
        RewardJoin(window_s=0)
    join = RewardJoin(window_s=10)
    join.decide(Decision(uuid.UUID(int=1), "u", T0, ("a",), "p"), T0)
    clone = RewardJoin(window_s=10)
    clone.restore(join.snapshot())
    assert clone.close_due(all_open=True)[0].decision.rec_id == uuid.UUID(int=1)


def test_session_dqn_learns_which_items_pay_and_trains_beside_scoring() -> None:
    d = 6
    dqn = SessionDQN(d, hidden=16, gamma=0.3, lr=1e-2, batch_size=64, buffer_size=2000, seed=0)
    rng = np.random.default_rng(0)
    state = SessionState.start(WORKOUT)
    for _ in range(300):  # reward = sign of feature 0
        X = rng.normal(size=(5, d)).astype(np.float32)
        dqn.learn(state, X, [float(np.sign(x[0])) for x in X])
    stop = threading.Event()

    def score() -> None:
        while not stop.is_set():
            dqn.q_values(state, rng.normal(size=(20, d)))

    scorer = threading.Thread(target=score)
    scorer.start()
    first = np.mean([dqn.train(1) for _ in range(10)])  # one minibatch's loss is noisy: average ten
    dqn.train(180)
    last = np.mean([dqn.train(1) for _ in range(10)])
    stop.set()
    scorer.join()
    assert last < first
    X = rng.normal(size=(200, d))
    q = dqn.q_values(state, X)
    assert np.corrcoef(q, X[:, 0])[0, 1] > 0.7  # it learned the sign of feature 0 (a scorer thread shares the rng)


def test_a_linear_bandit_beats_popularity_and_random_in_a_short_closed_loop() -> None:
    curves = {p: run(p, events=6_000, seed=3, n_listeners=60, progress=False) for p in ("random", "popularity", "linucb")}
    rate = {p: c.reward[-1] / c.impressions[-1] for p, c in curves.items()}
    assert rate["linucb"] > rate["popularity"] > rate["random"] * 0.9
    assert curves["linucb"].regret < curves["popularity"].regret
    assert all(c.oracle[-1] >= c.reward[-1] for c in curves.values())  # the oracle is an upper bound


def test_ceiling_bench_learner_told_the_truth_matches_the_oracle() -> None:
    """The ceiling bench's harness check: greedy on the true completion probability under the
    same slate rules is the oracle, so it scores exactly 100%; told less, it learns and scores
    less, but more than a learner told nothing useful would."""
    from bench.ceiling import TOLD, InformedLearner

    def informed(told: tuple[str, ...]):
        return lambda world, rules: InformedLearner(world, rules, told)

    truth = run("truth", events=4000, n_listeners=20, n_tracks=400, progress=False, factory=informed(TOLD["truth"]))
    assert truth.reward[-1] == pytest.approx(truth.oracle[-1], rel=1e-9)
    learned = run("population", events=4000, n_listeners=20, n_tracks=400, progress=False,
                  factory=informed(TOLD["population"]))
    rand = run("random", events=4000, n_listeners=20, n_tracks=400, progress=False)
    assert rand.reward[-1] / rand.impressions[-1] < learned.reward[-1] / learned.impressions[-1]
    assert learned.reward[-1] < learned.oracle[-1]


def test_a_listeners_state_is_bounded_and_keeps_what_they_heard_most() -> None:
    cat = synthetic_catalogue(7, 300)
    gen = CandidateGenerator(cat, n_candidates=20, max_tracks=20, max_artists=8)
    ctx = ListeningContext("relax", 20, 2, "mobile")
    for _ in range(5):  # track 0 and 1 heard often and finished
        for t in (0, 1):
            gen.observe("ann", "s1", "play_start", t, ctx)
            gen.observe("ann", "s1", "play_end", t, ctx)
    for t in range(2, 300):  # then the whole catalogue once each
        gen.observe("ann", "s1", "play_start", t, ctx)
    prof = gen.profiles["ann"]
    assert len(prof.track_shown) <= 20 and set(prof.track_pos) <= set(prof.track_shown)
    assert {0, 1} <= set(prof.track_shown) and prof.track_pos[0] == 5
    assert len(prof.artist_shown) <= 8
    with pytest.raises(ValueError, match="max_tracks"):
        CandidateGenerator(cat, max_tracks=2)
