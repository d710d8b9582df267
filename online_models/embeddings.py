"""Track embeddings learned from everyone, trained offline and served online.

A training job fits a collaborative model (:mod:`online_models.latent`: ALS by default, LightGCN
with ``--model lightgcn``) on listener x track completions and publishes the *track* vectors as
a versioned file; workers load the newest version in the background and swap it in between
batches. A listener's vector is never stored: it is folded in at serving time from the tracks
they finished (one ridge solve against the fixed track vectors, :func:`latent.fold_in`), so it
is current to the last event, and a listener the job never saw gets one from their first plays
(cold start) instead of a popularity list. With per-genre counts the job also fits the taste
clusters (:mod:`taste`), served with the vectors: a listener's genre prior is what listeners
like them finish.

    python -m online_models.embeddings train --file plays.csv --out var/embeddings \\
        [--user-col user_id --item-col track_id --weight-col finished --genre-col genre --played-col played]
    python -m online_models.embeddings train --clickhouse --days 30 --out var/embeddings
    python -m online_models.embeddings train --worker http://127.0.0.1:8080 --out var/embeddings  # chDB
    python -m online_models.embeddings show var/embeddings

Files: ``<out>/<version>.npz`` (track ids, vectors, fold-in parameters, provenance) and
``<out>/LATEST`` (the version to serve), each written to a temporary name and renamed, so a
reader never sees half a file. Pure apart from :func:`publish` / :func:`load` and the CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from online_models import latent, taste
from online_models.taste import GenreMixture

POSITIVE_KINDS = ("play_end", "like", "replay", "playlist_add", "thumbs_up")


@dataclass(frozen=True)
class TrackEmbeddings:
    version: str
    tracks: np.ndarray  # track ids (str)
    vectors: np.ndarray  # (tracks, dim) float32
    regularization: float
    alpha: float
    model: str
    rows: int  # interactions trained on
    listeners: int
    trained_at: str
    genres: np.ndarray  # genre names of the taste clusters' columns (empty: no clusters)
    cluster_rate: np.ndarray  # (clusters, genres): the taste clusters' finish rates (taste.GenreMixture)
    cluster_weight: np.ndarray  # (clusters,)

    def aligned(self, track_ids: list[str] | tuple[str, ...], genres: tuple[str, ...] = ()) -> Aligned:
        """The vectors on a catalogue's rows (zero for tracks the job never saw), and the taste
        clusters on the catalogue's genres (0.5 for genres the job never saw)."""
        pos = pd.Index(self.tracks).get_indexer(list(track_ids))
        V = np.zeros((len(track_ids), self.vectors.shape[1]), dtype=np.float64)
        known = pos >= 0
        V[known] = self.vectors[pos[known]]
        mixture = None
        if len(self.cluster_weight) and genres:
            at = pd.Index(self.genres).get_indexer(list(genres))
            rate = np.full((len(self.cluster_weight), len(genres)), 0.5)
            rate[:, at >= 0] = self.cluster_rate[:, at[at >= 0]]
            mixture = GenreMixture(rate, np.asarray(self.cluster_weight, dtype=np.float64))
        return Aligned(self.version, V, known, V.T @ V, self.regularization, self.alpha, mixture)


@dataclass(frozen=True)
class Aligned:
    """Embeddings on catalogue rows, as the serving policy uses them."""

    version: str
    V: np.ndarray  # (catalogue, dim)
    known: np.ndarray  # bool per catalogue row
    gram: np.ndarray  # V^T V, shared by every fold-in
    regularization: float
    alpha: float
    mixture: GenreMixture | None  # the taste clusters on the catalogue's genres

    def listener(self, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The listener's vector from the catalogue rows they finished (implicit-ALS user step)."""
        return latent.fold_in(self.V, rows, weights, self.regularization, self.alpha, self.gram)


def train(df: pd.DataFrame, *, user: str = "user_id", item: str = "track_id", weight: str | None = None,
          genre: str | None = None, played: str | None = None, model: str = "als", clusters: int = 16,
          seed: int = 0, progress: latent.Progress = latent._quiet, **params: Any) -> TrackEmbeddings:
    """Fit ``model`` on the interactions and return its track vectors (unpublished).

    One row per (listener, track): ``weight`` how often they finished it (rows without a
    weight column count once). With ``genre`` and ``played`` (how often it was played) columns,
    the taste clusters (:mod:`taste`, ``clusters`` of them) are fitted on the (finished, played)
    counts per listener and genre."""
    if df.empty:
        raise ValueError("no interactions to train on: let listeners finish some tracks first")
    finished = df[df[weight] > 0] if weight else df  # a track nobody finished gets no vector (zeros when served)
    m = latent.Interactions.from_frame(finished, user, item, weight, "log" if weight else "binary")
    if m.matrix.nnz == 0:
        raise ValueError("no finished tracks among the interactions: nothing to train on yet")
    if model == "als":
        fitted: latent.ALS | latent.LightGCNModel = latent.ALS(**params).fit(m.matrix, progress)
        reg, alpha = fitted.regularization, fitted.alpha
    elif model == "lightgcn":
        fitted = latent.LightGCNModel(**params).fit(m.matrix, progress)
        reg, alpha = latent.ALS().params["regularization"], latent.ALS().params["alpha"]
    else:
        raise ValueError(f"model must be als or lightgcn, got {model!r}")
    _, items = fitted.factors()
    genres, rate, share = np.array([], dtype=str), np.zeros((0, 0)), np.zeros(0)
    if genre and played and clusters > 0:
        fin = df[weight] if weight else pd.Series(1.0, index=df.index)
        counts = (df.assign(_f=np.minimum(fin, df[played]), _p=df[played])
                  .pivot_table(index=user, columns=genre, values=["_f", "_p"], aggfunc="sum", fill_value=0))
        genres = np.asarray(counts["_p"].columns, dtype=str)
        progress(f"taste clusters: EM over {len(counts):,} listeners x {len(genres)} genres")
        mix = taste.fit_mixture(counts["_f"].to_numpy(float), counts["_p"].to_numpy(float), clusters, seed=seed)
        rate, share = mix.rate, mix.weight
    now = datetime.now(UTC)
    return TrackEmbeddings(version=f"{model}-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}", tracks=m.items.astype(str),
                           vectors=np.asarray(items, dtype=np.float32), regularization=float(reg), alpha=float(alpha),
                           model=model, rows=int(m.matrix.nnz), listeners=int(m.matrix.shape[0]),
                           trained_at=now.isoformat(), genres=genres, cluster_rate=np.asarray(rate, dtype=np.float64),
                           cluster_weight=np.asarray(share, dtype=np.float64))


def publish(emb: TrackEmbeddings, directory: Path) -> Path:
    """Write ``<version>.npz`` then point ``LATEST`` at it (both atomic renames)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{emb.version}.npz"
    tmp = directory / f".{emb.version}.npz.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, tracks=emb.tracks, vectors=emb.vectors, genres=emb.genres, cluster_rate=emb.cluster_rate,
                 cluster_weight=emb.cluster_weight,
                 meta=json.dumps({k: getattr(emb, k) for k in ("version", "regularization", "alpha", "model", "rows",
                                                                "listeners", "trained_at")}))
    os.replace(tmp, path)
    latest = directory / ".LATEST.tmp"
    latest.write_text(emb.version)
    os.replace(latest, directory / "LATEST")
    return path


def latest_version(directory: Path) -> str | None:
    try:
        return (directory / "LATEST").read_text().strip() or None
    except FileNotFoundError:
        return None


def load(directory: Path, version: str) -> TrackEmbeddings:
    with np.load(directory / f"{version}.npz", allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        return TrackEmbeddings(tracks=z["tracks"].astype(str), vectors=z["vectors"], genres=z["genres"].astype(str),
                               cluster_rate=z["cluster_rate"], cluster_weight=z["cluster_weight"], **meta)


# --- where the interactions come from ---------------------------------------------------------


def interactions_sql(days: float) -> str:
    """Per (listener, track) over the last ``days``: plays, finishes and the track's genre."""
    return ("SELECT user_id, track_id, any(genre) AS genre, countIf(kind = 'play_start') AS played, "
            "countIf(kind = 'play_end') AS finished FROM events FINAL WHERE kind IN ('play_start', 'play_end') "
            f"AND occurred_at >= now() - INTERVAL {int(days * 86400)} SECOND GROUP BY user_id, track_id")


COLUMNS = ["user_id", "track_id", "genre", "played", "finished"]


def plays_frame(plays: dict[tuple[str, str], list[int]], genre_of: Any) -> pd.DataFrame:
    """The job's input from in-process counts: (listener, track) -> [plays, finishes], with
    ``genre_of(track_id)`` (what the simulator benches feed it instead of ClickHouse)."""
    return pd.DataFrame([(u, t, genre_of(t), p, f) for (u, t), (p, f) in plays.items()], columns=COLUMNS)


def train_on_plays(plays: dict[tuple[str, str], list[int]], genre_of: Any, **kw: Any) -> TrackEmbeddings:
    return train(plays_frame(plays, genre_of), weight="finished", genre="genre", played="played", **kw)


def from_worker(url: str, days: float) -> pd.DataFrame:
    from streams.settings import service_headers

    req = urllib.request.Request(f"{url.rstrip('/')}/api/dashboard/interactions?days={int(days)}",
                                 headers=service_headers())
    with urllib.request.urlopen(req, timeout=300) as r:
        return pd.DataFrame(json.loads(r.read()), columns=COLUMNS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m online_models.embeddings", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="fit track embeddings and publish them")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", help="CSV / Parquet interactions")
    src.add_argument("--clickhouse", action="store_true", help="the events table at ENCORE_CLICKHOUSE_DSN")
    src.add_argument("--worker", help="a worker's base URL (reads its chDB store through GET /v1/interactions)")
    t.add_argument("--user-col", default="user_id")
    t.add_argument("--item-col", default="track_id")
    t.add_argument("--weight-col", default=None, help="how often the listener finished the track (default: once)")
    t.add_argument("--genre-col", default=None, help="with --played-col: fit the taste clusters per genre")
    t.add_argument("--played-col", default=None, help="how often the track was played to the listener")
    t.add_argument("--clusters", type=int, default=16, help="taste clusters (0: none)")
    t.add_argument("--days", type=float, default=30.0, help="ClickHouse / worker: the last this many days")
    t.add_argument("--model", choices=["als", "lightgcn"], default="als")
    t.add_argument("--out", type=Path, default=None, help="default: where the workers look (ENCORE_EMBEDDINGS_DIR, "
                   "else <ENCORE_STATE_DIR>/embeddings)")
    s = sub.add_parser("show", help="the published versions")
    s.add_argument("dir", type=Path)
    args = ap.parse_args(argv)
    if args.command == "show":
        current = latest_version(args.dir)
        if current is None:
            print(f"{args.dir}: nothing published yet (run `python -m online_models.embeddings train`)")
            return 1
        emb = load(args.dir, current)
        print(f"serving {emb.version}: {len(emb.tracks):,} tracks x {emb.vectors.shape[1]} dims, {emb.model}, "
              f"trained on {emb.rows:,} interactions of {emb.listeners:,} listeners at {emb.trained_at}")
        return 0
    started = time.perf_counter()
    if args.file:
        from online_models.evaluate import need, read_table

        df = read_table(args.file)
        need(df, [args.user_col, args.item_col] + [c for c in (args.weight_col, args.genre_col, args.played_col) if c],
             args.file)
        user, item, weight = args.user_col, args.item_col, args.weight_col
        genre, played = args.genre_col, args.played_col
    else:
        if args.worker:
            df = from_worker(args.worker, args.days)
        else:
            from sinks.clickhouse import ClickHouseStore
            from streams.settings import load_settings

            df = pd.DataFrame(ClickHouseStore(load_settings().clickhouse_dsn).query(interactions_sql(args.days)),
                              columns=COLUMNS)
        user, item, weight, genre, played = "user_id", "track_id", "finished", "genre", "played"
    print(f"training {args.model} on {len(df):,} (listener, track) rows", flush=True)
    try:
        emb = train(df, user=user, item=item, weight=weight, genre=genre, played=played, model=args.model,
                    clusters=args.clusters, progress=lambda msg: print(f"  {msg}", flush=True))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out is None:
        from streams.settings import load_settings

        args.out = load_settings().embeddings_path
    path = publish(emb, args.out)
    print(f"published {emb.version} ({len(emb.tracks):,} tracks) to {path} in {time.perf_counter() - started:.1f} s; "
          "workers pick it up within ENCORE_EMBEDDINGS_POLL_S")
    return 0


if __name__ == "__main__":
    sys.exit(main())
