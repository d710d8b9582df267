"""Does learning from everyone help the live recommender? The closed loop with and without the
embedding job, in the community world and the old one.

    python -m bench.embeddings_effect                      # linucb, seeds 7,8,9, worlds 8 and 0 communities
    python -m bench.embeddings_effect --seeds 7 --policies linucb,lints

Each run is :func:`bench.closed_loop.run` (300 listeners, 100k events); "with" refits the
embeddings (ALS track vectors + taste clusters, :mod:`online_models.embeddings`) every
``--every`` events on the plays so far and serves each version, as a worker does with each
publication. Prints the % of the oracle's reward rate in the last 10k events (the goal: >= 90%)
and the mean reward per impression over the whole run, per world and seed, and writes
``bench/out/embeddings_effect.json``.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from bench.closed_loop import OUT, run


def one(policy: str, communities: int, seed: int, every: int, events: int) -> dict[str, Any]:
    c = run(policy, events=events, seed=seed, communities=communities, embeddings_every=every, progress=False)
    last, oracle = c.rate_last(10_000)
    return {"policy": policy, "communities": communities, "seed": seed, "embeddings": bool(every),
            "pct_oracle_last_10k": last / oracle, "reward_per_impression": c.reward[-1] / c.impressions[-1],
            "seconds": c.seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", default="linucb")
    ap.add_argument("--seeds", default="7,8,9")
    ap.add_argument("--worlds", default="8,0", help="communities per world (0: the old world)")
    ap.add_argument("--every", type=int, default=5000, help="events between refits of the embeddings")
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    grid = [(p, int(w), int(s), e) for p in args.policies.split(",") for w in args.worlds.split(",")
            for s in args.seeds.split(",") for e in (0, args.every)]
    print(f"{len(grid)} closed-loop runs of {args.events:,} events, {args.jobs} at a time", flush=True)
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(one, p, w, s, e, args.events) for p, w, s, e in grid]
        rows = []
        for f in futures:
            rows.append(f.result())
            r = rows[-1]
            print(f"  {r['policy']} world={r['communities']} seed={r['seed']} embeddings={'on ' if r['embeddings'] else 'off'}"
                  f"  {100 * r['pct_oracle_last_10k']:.1f}% of oracle (last 10k)  reward/imp {r['reward_per_impression']:.3f}",
                  flush=True)
    print(f"\n{'policy':<8} {'world':<14} {'embeddings':<10} {'% oracle last 10k (mean, min-max)':<34} reward/imp")
    for p in args.policies.split(","):
        for w in (int(x) for x in args.worlds.split(",")):
            for e in (False, True):
                got = [r for r in rows if r["policy"] == p and r["communities"] == w and r["embeddings"] == e]
                pct = np.array([r["pct_oracle_last_10k"] for r in got]) * 100
                rew = np.mean([r["reward_per_impression"] for r in got])
                world = f"{w} communities" if w else "old (none)"
                print(f"{p:<8} {world:<14} {'on' if e else 'off':<10} {pct.mean():5.1f}% ({pct.min():.1f}-{pct.max():.1f})"
                      f"{'':<16} {rew:.3f}")
    print("goal: >= 90% of the oracle in the last 10k events (300 listeners, 100k events, community world)")
    OUT.mkdir(exist_ok=True)
    (OUT / "embeddings_effect.json").write_text(json.dumps({"args": vars(args), "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
