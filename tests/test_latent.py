"""The collaborative models (online_models.latent) on the simulator's listeners: each learns from
everyone and must rank held-out completions better than popularity; the harness CLI prints them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from bench.offline_models import simulated_plays
from online_models.evaluate import main
from online_models.latent import (
    ALS,
    MODELS,
    Interactions,
    Popularity,
    evaluate,
    fold_in,
    matrices,
    split_frame,
)


@pytest.fixture(scope="module")
def sim() -> tuple[sp.csr_matrix, sp.csr_matrix]:
    df = simulated_plays(n_listeners=400, shown=150, seed=0)
    train, test = split_frame(df, "random", 0.2, None, "user", 0)
    tr, te = matrices(df, train, test, "user", "item", "plays", "log")
    return tr.matrix, te


FAST = {"lightgcn": {"epochs": 12}, "multvae": {"epochs": 25, "batch": 100}}


@pytest.mark.parametrize("name", ["item-knn", "ease", "als", "lightgcn", "multvae"])
def test_each_model_ranks_held_out_completions_better_than_popularity(sim, name: str) -> None:  # type: ignore[no-untyped-def]
    train, test = sim
    floor = evaluate(Popularity(), train, test)
    got = evaluate(MODELS[name](**FAST.get(name, {})), train, test)
    assert got.users == floor.users > 350
    assert got.ndcg > floor.ndcg * 1.15, f"{name}: NDCG@10 {got.ndcg:.4f} vs popularity {floor.ndcg:.4f}"
    assert got.recall > floor.recall and got.coverage > floor.coverage


def test_the_metrics_on_a_hand_made_ranking() -> None:
    """Two listeners, four items; a model that scores item ids in a fixed order."""
    train = sp.csr_matrix(np.array([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=np.float32))
    test = sp.csr_matrix(np.array([[0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float32))

    class Fixed:
        name = "fixed"

        def fit(self, X, progress=None):  # type: ignore[no-untyped-def]
            return self

        def scores(self, users: np.ndarray) -> np.ndarray:
            return np.tile(np.array([4.0, 3.0, 2.0, 1.0], dtype=np.float32), (len(users), 1))

    r = evaluate(Fixed(), train, test, k=2, k2=2)
    # listener 0 (has item 0) is shown 1, 2: a hit at rank 2; listener 1 (has item 1) is shown 0, 2: a miss
    assert r.users == 2
    assert r.ndcg == pytest.approx((1 / np.log2(3)) / 2)  # one hit at rank 2 of listener 0, none for 1
    assert r.recall == pytest.approx(0.5) and r.mrr == pytest.approx(0.25)
    assert r.coverage == pytest.approx(3 / 4)  # items 0, 1, 2 shown in someone's top 2


def test_weights_duplicates_and_shared_labels() -> None:
    df = pd.DataFrame({"u": ["a", "a", "b"], "i": ["x", "x", "y"], "w": [3.0, 4.0, 0.0]})
    m = Interactions.from_frame(df, "u", "i", "w", "log")
    assert m.matrix.shape == (2, 2) and m.matrix.nnz == 1  # duplicates add up; a zero weight is no row
    assert m.matrix[0, 0] == pytest.approx(np.log1p(7.0))
    assert Interactions.from_frame(df, "u", "i", "w", "raw").matrix[0, 0] == pytest.approx(7.0)


def test_als_fold_in_gives_a_new_listener_the_vector_training_would(sim) -> None:  # type: ignore[no-untyped-def]
    train, _ = sim
    als = ALS(iterations=15).fit(train)
    u = int(np.argmax(np.diff(train.indptr)))
    row = train[u]
    folded = fold_in(als.item_factors, row.indices, row.data, als.regularization, als.alpha)
    trained = als.user_factors[u]
    cos = folded @ trained / (np.linalg.norm(folded) * np.linalg.norm(trained))
    assert cos > 0.99  # the user step of ALS is exactly this solve


def test_the_harness_cli_prints_every_model(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    df = simulated_plays(n_listeners=200, shown=100, seed=1)
    df["ts"] = np.arange(len(df))
    path = tmp_path / "plays.csv"
    df.to_csv(path, index=False)
    assert main(["interactions", str(path), "--weight-col", "plays", "--time-col", "ts", "--split", "user-chrono",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["policies"]) == {"popularity", "item-knn", "ease", "als"}
    assert all(0 <= m["ndcg"] <= 1 and m["users"] > 100 for m in out["policies"].values())
    assert main(["interactions", str(path), "--models", "popularity,item-knn"]) == 0
    text = capsys.readouterr().out
    assert "NDCG@10" in text and "item-knn" in text
    with pytest.raises(SystemExit, match="unknown model"):
        main(["interactions", str(path), "--models", "svd++"])
    with pytest.raises(SystemExit, match="time column"):
        main(["interactions", str(path), "--split", "chrono"])
