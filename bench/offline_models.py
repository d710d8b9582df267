"""Offline model harness speed and quality: every model of :mod:`online_models.latent` on a
listener-item play-count table, timed against the goal.

    python -m bench.offline_models                     # 100k rows shaped like a public user-artist
                                                       # play-count file (1,900 listeners, 17.6k artists)
    python -m bench.offline_models --rows 1000000 --users 20000 --items 60000 --neural
    python -m bench.offline_models --file plays.csv --user-col user --item-col artist --weight-col plays

Without ``--file`` the table is generated: listeners in taste communities over latent item
vectors, Zipf-like item popularity and heavy-tailed play counts, so that collaborative models
have something to find (and popularity is a real baseline). Goals: the non-neural models in
<= 2 minutes on 100k rows; every model in <= 15 minutes on 1M rows. Prints the metric table and
the wall time next to the goal; writes ``bench/out/offline_models.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from online_models.evaluate import evaluate_interactions, read_table, table
from online_models.latent import DEFAULT, NEURAL

OUT = Path(__file__).resolve().parent / "out"


def synthetic_plays(rows: int, users: int, items: int, *, communities: int = 12, dim: int = 16,
                    seed: int = 0) -> pd.DataFrame:
    """About ``rows`` (listener, item, plays) rows: each listener draws distinct items with
    probability ~ exp(taste . item + log popularity) (Gumbel top-k), plays ~ lognormal."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.0, (communities, dim))
    taste = centres[rng.integers(communities, size=users)] + rng.normal(0, 0.5, (users, dim))
    vecs = rng.normal(0, 0.45, (items, dim))
    log_pop = -1.1 * np.log(rng.permutation(np.arange(1, items + 1)))  # Zipf-like popularity
    deg = np.maximum(5, rng.lognormal(np.log(rows / users) - 0.5, 1.0, users).astype(int))
    deg = np.minimum(deg, items // 2)
    deg = np.maximum(1, (deg * rows / deg.sum()).astype(int))
    out_u, out_i = [], []
    for start in range(0, users, 512):
        u = np.arange(start, min(start + 512, users))
        logits = taste[u] @ vecs.T + log_pop + rng.gumbel(size=(len(u), items))
        for row, uid in enumerate(u):
            top = np.argpartition(-logits[row], deg[uid])[: deg[uid]]
            out_u.append(np.full(len(top), uid))
            out_i.append(top)
    uu, ii = np.concatenate(out_u), np.concatenate(out_i)
    plays = np.maximum(1, rng.lognormal(3.5, 1.5, len(uu)).astype(int))
    return pd.DataFrame({"user": uu, "item": ii, "plays": plays})


def simulated_plays(n_listeners: int = 600, shown: int = 150, *, communities: int = 8, seed: int = 0,
                    n_tracks: int = 2000) -> pd.DataFrame:
    """The simulator's listeners (hidden tastes, taste communities) each shown ``shown`` tracks
    drawn by popularity in random activities; a row per track they finished."""
    from streams.simulator import ACTIVITY_TARGET, World, synthetic_catalogue

    catalogue = synthetic_catalogue(seed, n_tracks)
    world = World(catalogue, n_listeners=n_listeners, seed=seed + 1, communities=communities)
    rng = np.random.default_rng(seed)
    weights = catalogue.popularity / catalogue.popularity.sum()
    activities = sorted(ACTIVITY_TARGET)
    rows = []
    for listener in world.listeners:
        p = np.mean([world.completion_prob(listener, a) for a in activities], axis=0)
        items = rng.choice(len(catalogue), size=shown, replace=False, p=weights)
        done = items[rng.random(shown) < p[items]]
        rows += [(listener.user_id, catalogue.track_ids[i]) for i in done]
    return pd.DataFrame(rows, columns=["user", "item"]).assign(plays=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--file", default=None, help="a CSV / Parquet table instead of generated data")
    ap.add_argument("--user-col", default="user")
    ap.add_argument("--item-col", default="item")
    ap.add_argument("--weight-col", default="plays")
    ap.add_argument("--simulator", action="store_true", help="the simulator's listeners instead (taste communities)")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=1_900)
    ap.add_argument("--items", type=int, default=17_600)
    ap.add_argument("--neural", action="store_true", help="also LightGCN and Mult-VAE")
    ap.add_argument("--models", default=None, help="comma-separated (default: every non-neural model)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.file:
        df = read_table(args.file)
    elif args.simulator:
        df = simulated_plays(seed=args.seed)
    else:
        print(f"generating ~{args.rows:,} rows: {args.users:,} listeners x {args.items:,} items", flush=True)
        df = synthetic_plays(args.rows, args.users, args.items, seed=args.seed)
    names = (args.models.split(",") if args.models
             else [*DEFAULT, "bpr", *(sorted(NEURAL) if args.neural else [])])
    started = time.perf_counter()
    result = evaluate_interactions(df, user=args.user_col, item=args.item_col, weight=args.weight_col, time=None,
                                   how="random", test_frac=0.2, k=10, seed=args.seed, models=names)
    wall = time.perf_counter() - started
    print(f"\n{len(df):,} rows, " + table(result))
    goal = 120 if len(df) <= 150_000 and not (set(names) & NEURAL) else 900
    print(f"\nwall time {wall:.0f} s for {len(names)} models on {len(df):,} rows (goal <= {goal} s: "
          f"{'met' if wall <= goal else 'NOT met'})")
    OUT.mkdir(exist_ok=True)
    (OUT / "offline_models.json").write_text(json.dumps({
        "rows": len(df), "wall_seconds": wall, "goal_seconds": goal,
        "models": result["policies"]}, indent=2))


if __name__ == "__main__":
    main()
