"""Do the listener surfaces change engagement? The same simulated listeners with and without
friends and lists.

- **friends**: each listener follows ``--follows`` others, 80% from their own taste community
  (people befriend people like them). Before each slate the recommender is told what the
  listeners they follow finished lately (what the worker reads from the listener store): a
  candidate source with a slate position of its own.
- **lists**: a ``--lists-share`` of sessions begin by playing one of the listener's lists
  (Daily Mix, Discovery Weekly or Hidden Gems, online_models.lists) from the top, then go on
  with slates while the listener stays.
- **neither**: the same world and seed with slates only.

Reported per run: completion rate, discovery share (completions of an artist the listener had
never finished), plays per session, and the slates' % of the oracle.

    python -m bench.engagement [--events 60000] [--seeds 7 8] [--follows 5] [--lists-share 0.3]
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
    ap.add_argument("--lists-share", type=float, default=0.3)
    args = ap.parse_args(argv)
    rows = []
    for seed in args.seeds:
        # the world run() builds for this seed, to draw its follow graph from its communities
        world = World(synthetic_catalogue(seed, 2000), n_listeners=args.listeners, seed=seed + 1,
                      run_id="bench-linucb", communities=8)
        graph = world.friend_graph(args.follows, seed=seed)
        for label, friends, share in (("neither", None, 0.0), ("friends", graph, 0.0), ("lists", None, args.lists_share),
                                      ("both", graph, args.lists_share)):
            curve = run("linucb", events=args.events, seed=seed, n_listeners=args.listeners, progress=False,
                        friends=friends, lists_share=share)
            got = curve.engagement()
            policy, oracle = curve.rate_between(0, curve.events[-1])
            got["oracle_share"] = policy / oracle
            got["friend_items"] = curve.friend_picks / max(curve.plays, 1)
            rows.append({"seed": seed, "run": label, **got})
            print(f"seed {seed}  {label:<8} completion {got['completion_rate']:.3f}  discovery "
                  f"{got['discovery_share']:.3f}  plays/session {got['session_length']:.2f}  "
                  f"{100 * got['oracle_share']:.1f}% of the oracle  friends' items per play "
                  f"{got['friend_items']:.3f}", flush=True)
    print(f"\nagainst 'neither' (mean over seeds {args.seeds}; following {args.follows}, "
          f"{args.lists_share:.0%} of sessions from a list):")
    print(f"  {'':<9}" + "".join(f"{m:>26}" for m in ("completion_rate", "discovery_share", "session_length",
                                                       "oracle_share")))
    base = {m: [r[m] for r in rows if r["run"] == "neither"] for m in ("completion_rate", "discovery_share",
                                                                         "session_length", "oracle_share")}
    for label in ("neither", "friends", "lists", "both"):
        line = f"  {label:<9}"
        for metric, b in base.items():
            got = [r[metric] for r in rows if r["run"] == label]
            change = sum(w / x - 1 for w, x in zip(got, b, strict=True)) / len(b)
            line += f"{sum(got) / len(got):>17.3f} ({100 * change:+5.1f}%)"
        print(line)
    OUT.mkdir(exist_ok=True)
    (OUT / "engagement.json").write_text(json.dumps(rows, indent=1))
    print(f"rows: {OUT / 'engagement.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
