"""Offline evaluation: estimators against known truth, ranking metrics by hand, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from online_models.evaluate import main
from online_models.evaluation import (
    average_precision,
    cumulative_regret,
    doubly_robust,
    ips,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    reciprocal_rank,
    replay,
    snips,
)

# a contextual bandit with known reward probabilities: 2 contexts x 3 actions
P = np.array([[0.1, 0.5, 0.3], [0.6, 0.2, 0.1]])


def logged(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ctx = rng.integers(0, 2, n)
    logging = np.array([[0.5, 0.25, 0.25], [0.2, 0.4, 0.4]])  # not uniform: the weights matter
    action = np.array([rng.choice(3, p=logging[c]) for c in ctx])
    reward = (rng.random(n) < P[ctx, action]).astype(float)
    return pd.DataFrame({"ctx": ctx, "action": action, "reward": reward, "propensity": logging[ctx, action]})


def test_estimators_recover_a_known_policy_value() -> None:
    df = logged(40_000)
    best = P.argmax(axis=1)  # target: the best action in each context; true value = mean of maxima
    truth = float(np.mean(P.max(axis=1)))
    target = (df["action"].to_numpy() == best[df["ctx"]]).astype(float)
    r, p = df["reward"].to_numpy(), df["propensity"].to_numpy()
    assert ips(r, target, p) == pytest.approx(truth, abs=0.02)
    assert snips(r, target, p) == pytest.approx(truth, abs=0.02)
    q_exact = P[df["ctx"], df["action"]]
    assert doubly_robust(r, target, p, q_exact, P.max(axis=1)[df["ctx"]]) == pytest.approx(truth, abs=0.01)
    zeros = np.zeros(len(df))
    assert doubly_robust(r, target, p, zeros, zeros) == pytest.approx(ips(r, target, p))
    assert ips(r, target, p, clip=1.0) <= ips(r, target, p)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_estimators_refuse_impossible_propensities(bad: float) -> None:
    with pytest.raises(ValueError, match="propensities"):
        ips(np.ones(2), np.ones(2), np.array([0.5, bad]))


def test_replay_and_regret() -> None:
    mean, n = replay(np.array([1.0, 0.0, 1.0]), ["a", "b", "c"], ["a", "x", "c"])
    assert (mean, n) == (1.0, 2)
    assert cumulative_regret(np.array([1.0, 1.0]), np.array([0.5, 1.0])).tolist() == [0.5, 0.5]


def test_ranking_metrics_by_hand() -> None:
    ranked, relevant = ["a", "b", "c", "d"], {"b", "d", "z"}
    assert precision_at_k(ranked, relevant, 2) == 0.5
    assert recall_at_k(ranked, relevant, 4) == pytest.approx(2 / 3)
    assert average_precision(ranked, relevant) == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert reciprocal_rank(ranked, relevant) == 0.5
    gains = {"b": 3.0, "d": 1.0}
    dcg = 3 / np.log2(3) + 1 / np.log2(5)
    idcg = 3 / np.log2(2) + 1 / np.log2(3)
    assert ndcg_at_k(ranked, gains, 4) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(["b", "d"], gains, 2) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        precision_at_k(ranked, relevant, 0)


def test_bandit_feedback_cli(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "feedback.parquet"
    logged(30_000, seed=1).to_parquet(path)
    assert main(["bandit-feedback", str(path), "--context-cols", "ctx", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    pol = out["policies"]
    truth = float(np.mean(P.max(axis=1)))
    assert pol["best-action-per-context"]["dr"] == pytest.approx(truth, abs=0.03)
    assert pol["best-action-per-context"]["snips"] > pol["uniform"]["snips"] > 0
    assert pol["uniform"]["ips"] == pytest.approx(float(P.mean(axis=1).mean()), abs=0.03)


def test_interactions_cli_ranks_better_than_popularity(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(3)
    rows = []
    for u in range(300):
        group = u % 5  # each user likes one group of 10 items, with a popularity skew inside it
        for t in range(12):
            item = group * 10 + int(min(9, rng.geometric(0.35) - 1))
            rows.append({"user": f"u{u}", "item": f"i{item}", "rating": 1 + (t % 5), "timestamp": u * 100 + t})
    path = tmp_path / "interactions.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    assert main(["interactions", str(path), "--weight-col", "rating", "--time-col", "timestamp", "--split", "user-chrono",
                 "--k", "5", "--json"]) == 0
    pol = json.loads(capsys.readouterr().out)["policies"]
    assert pol["item-knn"]["ndcg"] > pol["popularity"]["ndcg"] and pol["item-knn"]["recall"] > pol["popularity"]["recall"]
    assert pol["item-knn"]["users"] > 0
    with pytest.raises(SystemExit, match="missing column"):
        main(["interactions", str(path), "--user-col", "listener"])


def test_a_stochastic_linucb_log_scores_the_greedy_ranking_it_did_not_serve() -> None:
    """What the worker's rewards log is for: exact propensities from LinUCB's softmax draw let
    IPS / SNIPS / DR estimate another policy (here the greedy LinUCB) without serving it."""
    from online_models.linear import LinUCB

    rng = np.random.default_rng(3)
    d, n_cand, n = 8, 20, 4_000
    w_true = rng.normal(0, 0.6, d)
    model = LinUCB(d, alpha=0.2, temperature=0.3, floor=0.05)
    for _ in range(200):  # learn a little first: the logger is a half-trained model
        X = rng.normal(size=(n_cand, d))
        pick = rng.integers(n_cand, size=3)
        model.update(X[pick], (rng.random(3) < 1 / (1 + np.exp(-(X[pick] @ w_true)))).astype(float))
    r, p, target, q_logged, q_target, truth = [], [], [], [], [], []
    everything = np.ones(n_cand, dtype=bool)
    for _ in range(n):
        X = rng.normal(size=(n_cand, d))
        p_true = 1 / (1 + np.exp(-(X @ w_true)))
        i, prop, _ = model.chooser(X, rng)(everything)
        greedy = int(np.argmax(model.scores(X)))
        q = np.clip(X @ model.theta, 0, 1)
        r.append(float(rng.random() < p_true[i]))
        p.append(prop)
        target.append(float(i == greedy))
        q_logged.append(q[i])
        q_target.append(q[greedy])
        truth.append(p_true[greedy])
    r, p, target = np.array(r), np.array(p), np.array(target)
    value = float(np.mean(truth))
    assert 0 < p.min() and p.max() < 1  # stochastic, every logged pick possible
    logged_value = float(r.mean())
    assert abs(logged_value - value) > 0.05  # the logger itself is no stand-in for the target
    assert ips(r, target, p) == pytest.approx(value, rel=0.1)
    assert snips(r, target, p) == pytest.approx(value, rel=0.1)
    assert doubly_robust(r, target, p, np.array(q_logged), np.array(q_target)) == pytest.approx(value, rel=0.1)
