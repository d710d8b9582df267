"""Embeddings served online (online_models.embeddings) and taste clusters (online_models.taste):
the job's files, the fold-in of a new listener, the clusters' recovery of planted tastes, and a
policy serving a version."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from online_models import embeddings
from online_models.context import ListeningContext
from online_models.features import COLUMN, build_features
from online_models.policy import make_policy
from online_models.taste import fit_mixture
from streams.simulator import ACTIVITY_TARGET, World, synthetic_catalogue


def test_the_mixture_finds_planted_taste_clusters() -> None:
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.1, 0.9, (3, 12))  # 3 clusters, 12 genres
    members = rng.integers(3, size=300)
    played = rng.integers(5, 30, (300, 12)).astype(float)
    finished = rng.binomial(played.astype(int), truth[members]).astype(float)
    mix = fit_mixture(finished, played, k=3, seed=1)
    assert adjusted_rand_score(members, mix.log_posterior(finished, played).argmax(1)) > 0.95
    # a listener with no plays: the population's mix, not 0.5
    assert mix.prior(np.zeros(12), np.zeros(12)) == pytest.approx(mix.weight @ mix.rate)
    with pytest.raises(ValueError, match="between 0 and the played"):
        fit_mixture(played + 1, played)


@pytest.fixture(scope="module")
def world_plays() -> tuple[World, pd.DataFrame]:
    """What ClickHouse's events table gives the job: per (listener, track), plays and finishes."""
    cat = synthetic_catalogue(7, 2000)
    world = World(cat, n_listeners=400, seed=3, communities=8)
    rng = np.random.default_rng(3)
    weights = cat.popularity / cat.popularity.sum()
    rows = []
    for listener in world.listeners:
        p = np.mean([world.completion_prob(listener, a) for a in ACTIVITY_TARGET], axis=0)
        for i in rng.choice(len(cat), size=120, replace=False, p=weights):
            rows.append((listener.user_id, cat.track_ids[i], cat.genre_of(i), 1, int(rng.random() < p[i])))
    return world, pd.DataFrame(rows, columns=embeddings.COLUMNS)


def test_train_publish_load_round_trip(world_plays, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, df = world_plays
    emb = embeddings.train(df, weight="finished", genre="genre", played="played", clusters=8)
    assert emb.vectors.shape[0] == df.loc[df.finished > 0, "track_id"].nunique()
    assert emb.cluster_rate.shape == (8, df.genre.nunique()) and emb.cluster_weight.sum() == pytest.approx(1.0)
    assert embeddings.latest_version(tmp_path) is None
    embeddings.publish(emb, tmp_path)
    assert embeddings.latest_version(tmp_path) == emb.version
    back = embeddings.load(tmp_path, emb.version)
    assert np.array_equal(back.vectors, emb.vectors) and list(back.tracks) == list(emb.tracks)
    assert np.allclose(back.cluster_rate, emb.cluster_rate) and back.model == "als" and back.rows == emb.rows
    assert not list(tmp_path.glob(".*tmp"))  # written aside, then renamed
    assert embeddings.main(["show", str(tmp_path)]) == 0
    with pytest.raises(ValueError, match="no finished tracks"):
        embeddings.train(df.assign(finished=0), weight="finished")


def test_a_new_listener_is_folded_in_from_their_first_plays(world_plays) -> None:  # type: ignore[no-untyped-def]
    world, df = world_plays
    cat = world.catalogue
    policy = make_policy("linucb", cat)
    ctx = ListeningContext(device="mobile", activity="relax", local_hour=20, weekday=2)
    new = "u-new"
    emb = embeddings.train(df, weight="finished", genre="genre", played="played", clusters=8)
    policy.set_embeddings(emb)
    gen = policy.gen
    # before any play: no listener vector (cf columns 0), and the genre prior is the population's
    cands = gen.generate(new, ctx, np.random.default_rng(0))
    X = build_features(gen, gen.profile(new), ctx, cands)
    assert not X[:, COLUMN["cf_track"]].any()
    assert gen.genre_prior_of(gen.profile(new)) == pytest.approx(emb.aligned(cat.track_ids, cat.genres).mixture.weight
                                                                 @ emb.aligned(cat.track_ids, cat.genres).mixture.rate)
    # five finished tracks of one genre: a vector, cf scores that favour that genre, a prior that moved
    genre = int(np.bincount(cat.genre_idx).argmax())
    seeds = np.flatnonzero((cat.genre_idx == genre) & np.isin(cat.track_ids, emb.tracks))[:5]
    for i in seeds:
        policy.observe(new, "s", "play_start", int(i), ctx)
        policy.observe(new, "s", "play_end", int(i), ctx)
    prof = gen.profile(new)
    track, by_genre, by_artist = gen.cf_scores(prof, np.arange(len(cat)))
    assert track.std() > 0 and by_genre.std() > 0 and by_artist.std() > 0
    assert np.median(track[seeds]) > np.quantile(track, 0.9)  # what they finished is close to them
    prior = gen.genre_prior_of(prof)
    assert prior[genre] > emb.aligned(cat.track_ids, cat.genres).mixture.prior(np.zeros(len(cat.genres)),
                                                                                np.zeros(len(cat.genres)))[genre]
    # serving still works, and switching embeddings off returns to the plain features
    assert len(policy.recommend(new, "s", ctx, 10, np.random.default_rng(1)).slate.picks) == 10
    policy.set_embeddings(None)
    assert not build_features(gen, prof, ctx, cands)[:, COLUMN["cf_track"]].any()
