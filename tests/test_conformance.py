"""One conformance suite over every model in online_models (as river's checks do): snapshot
round trip, seeded determinism, inputs left untouched, unknown features tolerated where the
model takes free-form input, invalid hyperparameters rejected."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from online_models.context import ListeningContext
from online_models.linear import EpsilonGreedyLinear, LinTS, LinUCB
from online_models.policy import HybridPolicy, PopularityPolicy, RandomPolicy, make_policy
from online_models.popularity import ContextPopularity
from online_models.rl import SessionDQN
from online_models.slate import SlateRules
from streams.simulator import synthetic_catalogue

CAT = synthetic_catalogue(2, 200)
D = 16


def features(seed: int, n: int = 60) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, D))


@dataclass
class Case:
    make: Callable[[], Any]
    learn: Callable[[Any], None]
    decide: Callable[[Any, int], list[int]]
    bad: list[dict[str, Any]]


def linear_case(cls: type, bad: list[dict[str, Any]]) -> Case:
    def learn(m: Any) -> None:
        X = features(1)
        m.update(X[:20], (X[:20, 0] > 0).astype(float))

    def decide(m: Any, seed: int) -> list[int]:
        return m.rank(features(2), 10, np.random.default_rng(seed)).indices.tolist()

    return Case(lambda: cls(D), learn, decide, bad)


def popularity_decide(m: ContextPopularity, seed: int) -> list[int]:
    return [p.track_idx for p in m.recommend(ListeningContext("workout", 8), 10, np.random.default_rng(seed)).picks]


def serving_case(name: str, bad: list[dict[str, Any]]) -> Case:
    ctx = ListeningContext("workout", 8)

    def make() -> Any:
        return make_policy(name, CAT, n_candidates=50, seed=0)

    def learn(m: Any) -> None:
        for t in range(0, 40, 4):
            m.observe("u", "s", "play_start", t, ctx)
            m.observe("u", "s", "play_end" if t % 8 else "skip", t, ctx)
        for seed in range(3):
            d = m.recommend("u", "s", ctx, 5, np.random.default_rng(seed))
            m.learn(d.payload, tuple(1.0 if i % 2 else -0.5 for i in range(5)))
        if isinstance(getattr(m, "ranker", None), SessionDQN):
            m.ranker.batch_size = 8
            m.ranker.train(5)

    def decide(m: Any, seed: int) -> list[int]:
        return [p.track_idx for p in m.recommend("u", "s", ctx, 10, np.random.default_rng(seed)).slate.picks]

    return Case(make, learn, decide, [{"name": name, **b} for b in bad])


SERVING = {f"serving:{name}": serving_case(name, bad) for name, bad in {
    "random": [{"rules": "not-rules"}],
    "popularity": [{"temperature": 0}],
    "eps-greedy": [{"epsilon": 2}, {"n_candidates": 0}],
    "linucb": [{"alpha": -1}, {"n_candidates": 0}],
    "lints": [{"v": 0}],
    "session-dqn": [{"gamma": 1.0}, {"lr": 0}, {"temperature": -1}],
}.items()}


def test_unknown_policy_names_are_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="choose one of random, popularity"):
        make_policy("no-such-policy", CAT)


def _make_serving(name: str, **kw: Any) -> Any:
    if kw.get("rules") == "not-rules":
        return SlateRules(artist_cap=0)
    return make_policy(name, CAT, n_candidates=kw.pop("n_candidates", 50), **kw)


CASES = {
    "popularity": Case(lambda: ContextPopularity(CAT),
                       lambda m: [m.learn("play_end", i, ListeningContext("workout", 8)) for i in range(0, 50, 3)],
                       popularity_decide, [{"temperature": 0}, {"prior_weight": -1}]),
    "linucb": linear_case(LinUCB, [{"alpha": -1}, {"l2": 0}, {"n_features": 0}, {"link": "probit"}]),
    "lints": linear_case(LinTS, [{"v": 0}, {"propensity_draws": 0}, {"l2": -1}]),
    "eps-greedy": linear_case(EpsilonGreedyLinear, [{"epsilon": 1.5}, {"epsilon": -0.1}]),
    **SERVING,
}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]


def test_snapshot_round_trip(case: Case) -> None:
    model = case.make()
    case.learn(model)
    clone = case.make()
    clone.restore(model.snapshot())
    assert case.decide(clone, 5) == case.decide(model, 5)


def test_seeded_decisions_are_deterministic(case: Case) -> None:
    a, b = case.make(), case.make()
    case.learn(a)
    case.learn(b)
    assert case.decide(a, 7) == case.decide(b, 7)


def test_learning_changes_decisions_and_leaves_inputs_alone(case: Case) -> None:
    model = case.make()
    before = case.decide(model, 3)
    case.learn(model)
    assert case.decide(model, 3) != before or isinstance(model, ContextPopularity | RandomPolicy) and not isinstance(
        model, PopularityPolicy)
    if isinstance(model, RandomPolicy | HybridPolicy):
        exclude = np.array([1, 2, 3])
        model.recommend("u", "s", ListeningContext(), 5, np.random.default_rng(0), exclude)
        assert exclude.tolist() == [1, 2, 3]
    elif not isinstance(model, ContextPopularity):
        X = features(9)
        r = np.ones(len(X))
        X0, r0 = X.copy(), r.copy()
        model.update(X, r)
        model.rank(X, 5, np.random.default_rng(0))
        assert np.array_equal(X, X0) and np.array_equal(r, r0)


def test_unknown_input_is_tolerated_or_refused_clearly(case: Case) -> None:
    model = case.make()
    if isinstance(model, RandomPolicy | HybridPolicy):
        model.observe("u", "s", "no_such_kind", 3, ListeningContext("hologram", 8))  # ignored
        model.observe("u", "s", "like", 10**9, ListeningContext())  # unknown track: ignored
        assert len(model.recommend("u", "s", ListeningContext("hologram", 3), 5, np.random.default_rng(0))
                   .slate.picks) == 5
    elif isinstance(model, ContextPopularity):
        assert model.learn("no_such_kind", 3, ListeningContext("hologram", 8)) == 0.0  # ignored
        assert model.learn("like", 10**9, ListeningContext()) == 0.0  # unknown track: ignored
        assert len(model.recommend(ListeningContext("hologram", 30 % 24), 5, np.random.default_rng(0)).picks) == 5
    else:
        with pytest.raises(ValueError, match="features must be"):
            model.rank(np.zeros((5, D + 1)), 3, np.random.default_rng(0))


def test_invalid_hyperparameters_are_rejected(case: Case) -> None:
    for bad in case.bad:
        with pytest.raises(ValueError):
            if isinstance(case.make(), RandomPolicy | HybridPolicy):
                _make_serving(**bad)
            elif isinstance(case.make(), ContextPopularity):
                ContextPopularity(CAT, **bad)
            else:
                cls = type(case.make())
                kwargs = {"n_features": D, **bad}
                cls(kwargs.pop("n_features"), **kwargs)


@pytest.mark.parametrize("link", ["identity", "logit"])
@pytest.mark.parametrize("cls", [LinUCB, LinTS, EpsilonGreedyLinear])
def test_linear_bandits_learn_the_best_items_and_merge_deltas(cls: type, link: str) -> None:
    rng = np.random.default_rng(0)
    theta = rng.normal(size=D)
    a, b = cls(D, link=link), cls(D, link=link)
    for step in range(300):
        X = rng.normal(size=(50, D))
        model = a if step % 2 else b
        shown = model.rank(X, 5, rng).indices
        if link == "logit":  # binary rewards with a logistic truth
            y = (rng.random(len(shown)) < 1 / (1 + np.exp(-(X[shown] @ theta)))).astype(float)
        else:
            y = X[shown] @ theta + rng.normal(0, 0.1, len(shown))
        model.update(X[shown], y)
    a.merge(b.delta())  # a now holds both workers' statistics
    b_only = b
    X = rng.normal(size=(200, D))
    best = set(np.argsort(-(X @ theta))[:10].tolist())
    picked = set(a.rank(X, 10, np.random.default_rng(1)).indices.tolist())
    assert len(best & picked) >= 6
    assert np.corrcoef(a.theta, theta)[0, 1] > np.corrcoef(b_only.theta, theta)[0, 1] - 0.05


def test_eps_greedy_propensities_are_exact() -> None:
    model = EpsilonGreedyLinear(D, epsilon=0.3)
    X = features(4, n=6)
    model.update(X, X[:, 0])
    first = {}
    n = 20_000
    rng = np.random.default_rng(0)
    for _ in range(n):
        r = model.rank(X, 1, rng)
        first[int(r.indices[0])] = (first.get(int(r.indices[0]), (0, r.propensities[0]))[0] + 1, r.propensities[0])
    for count, prop in first.values():
        assert count / n == pytest.approx(prop, abs=0.01)


def test_stochastic_linucb_propensities_are_exact_and_every_candidate_keeps_one() -> None:
    model = LinUCB(D, temperature=0.5, floor=0.1)
    X = features(5, n=6)
    model.update(X, X[:, 0])
    seen: dict[int, list] = {}
    n = 20_000
    rng = np.random.default_rng(0)
    for _ in range(n):
        r = model.rank(X, 1, rng)
        seen.setdefault(int(r.indices[0]), [0, r.propensities[0]])[0] += 1
    assert len(seen) == 6  # the floor: every candidate is drawn sometimes
    for count, prop in seen.values():
        assert prop >= 0.1 / 6 - 1e-12
        assert count / n == pytest.approx(prop, abs=0.01)
    assert sum(p for _, p in seen.values()) == pytest.approx(1.0)


def test_a_snapshot_restores_what_was_learned_not_the_configured_exploration() -> None:
    old = LinUCB(D, alpha=0.9, temperature=0.0)
    X = features(6)
    old.update(X, X[:, 1])
    new = LinUCB(D, alpha=0.3, temperature=0.05, floor=0.05)  # the operator changed the knobs
    new.restore(old.snapshot())
    assert (new.alpha, new.temperature, new.floor) == (0.3, 0.05, 0.05)
    np.testing.assert_allclose(new.theta, old.theta)
    with pytest.raises(ValueError, match="floor needs temperature"):
        LinUCB(D, floor=0.1)
    with pytest.raises(ValueError, match="temperature"):
        LinUCB(D, temperature=-1)
