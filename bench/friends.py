"""Do friends help? The same simulated listeners with and without a follow graph.

Each listener follows ``--follows`` others, 80% from their own taste community (people befriend
people like them). With friends, the recommender is told before each slate what the listeners
they follow finished lately (what the worker reads from the listener store): a candidate source
with a slate position of its own (SlateRules.friends_position). Without, the same world and
seed, and no friends source. Reported: completion rate, discovery share (completions of an
artist the listener had never finished), plays per session, and % of the oracle.

    python -m bench.friends [--events 60000] [--seeds 7 8] [--follows 5]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.closed_loop import run
from streams.simulator import World, synthetic_catalogue

OUT = Path(__file__).resolve().parent / "out"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 8])
    ap.add_argument("--follows", type=int, default=5)
    ap.add_argument("--listeners", type=int, default=300)
    args = ap.parse_args(argv)
    rows = []
    for seed in args.seeds:
        # the world run() builds for this seed, to draw its follow graph from its communities
        world = World(synthetic_catalogue(seed, 2000), n_listeners=args.listeners, seed=seed + 1,
                      run_id="bench-linucb", communities=8)
        graph = world.friend_graph(args.follows, seed=seed)
        for label, friends in (("without friends", None), (f"following {args.follows}", graph)):
            curve = run("linucb", events=args.events, seed=seed, n_listeners=args.listeners, progress=False,
                        friends=friends)
            got = curve.engagement()
            policy, oracle = curve.rate_between(0, curve.events[-1])
            got["oracle_share"] = policy / oracle
            got["friend_items"] = curve.friend_picks / max(curve.plays, 1)
            rows.append({"seed": seed, "run": label, **got})
            print(f"seed {seed}  {label:<16} completion {got['completion_rate']:.3f}  discovery "
                  f"{got['discovery_share']:.3f}  plays/session {got['session_length']:.2f}  "
                  f"{100 * got['oracle_share']:.1f}% of the oracle  friends' items per play "
                  f"{got['friend_items']:.3f}", flush=True)
    print("\nchange with friends (mean over seeds):")
    for metric in ("completion_rate", "discovery_share", "session_length", "oracle_share"):
        base = [r[metric] for r in rows if r["run"] == "without friends"]
        with_ = [r[metric] for r in rows if r["run"] != "without friends"]
        change = sum(w / b - 1 for w, b in zip(with_, base, strict=True)) / len(base)
        print(f"  {metric:<16} {sum(base) / len(base):.3f} -> {sum(with_) / len(with_):.3f}  ({100 * change:+.1f}%)")
    OUT.mkdir(exist_ok=True)
    (OUT / "friends.json").write_text(json.dumps(rows, indent=1))
    print(f"rows: {OUT / 'friends.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
