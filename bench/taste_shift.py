"""When listeners' tastes move: does the recommender notice, and recover?

    python -m bench.taste_shift                      # 100k events, half the listeners shift at 50k
    python -m bench.taste_shift --events 60000 --shift-at 30000 --share 0.3

LinUCB serves the simulator's listeners (communities world, 300 listeners). After ``--shift-at``
events a ``--share`` of them draw a new genre taste and new favourite artists
(:meth:`World.shift_tastes`). Two runs on the same seed:

- **react**: river's ADWIN watches each listener's completions (:mod:`behaviour`); a detected
  drop fades what was learned of them to ``--fade`` (the worker's default);
- **ignore**: the same detector, no reaction (fade 1.0).

Reported: the reward rate as % of the oracle's in the 20k events after the shift and in the last
10k; how many of the shifted listeners were flagged after the shift (recall) and how many of the
others were flagged at all (false alarms). Writes ``bench/out/taste_shift.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench.closed_loop import Curve, run
from online_models.policy import HybridPolicy, make_policy

OUT = Path(__file__).resolve().parent / "out"


def one(fade: float, args: argparse.Namespace) -> tuple[Curve, dict]:
    kept: dict = {}

    def factory(world, rules) -> HybridPolicy:  # noqa: ANN001
        policy = make_policy("linucb", world.catalogue, rules=rules, fade_on_shift=fade, shift_delta=args.delta)
        shift = world.shift_tastes

        def counted_shift(share: float, seed: int = 0) -> list[str]:  # flags so far, at the moment of the shift
            kept["before"] = {u: p.behaviour.shifts for u, p in policy.gen.profiles.items() if p.behaviour}
            moved = shift(share, seed)
            if args.told and fade < 1:  # the ceiling of reacting: told who moved, at once
                for u in moved:
                    policy.gen.profile(u).fade(fade)
            return moved

        world.shift_tastes = counted_shift
        kept["policy"] = policy
        return policy  # type: ignore[return-value]

    curve = run(f"linucb fade {fade}", events=args.events, seed=args.seed, n_listeners=args.listeners,
                factory=factory, shift_at=args.shift_at, shift_share=args.share)
    policy, before = kept["policy"], kept.get("before", {})
    flags = {u: p.behaviour.shifts for u, p in policy.gen.profiles.items() if p.behaviour}
    moved = set(curve.shifted)
    after = {u: flags.get(u, 0) - before.get(u, 0) for u in flags}
    stayed = [u for u in flags if u not in moved]
    detection = {
        "recall": float(np.mean([after.get(u, 0) > 0 for u in moved])) if moved else float("nan"),
        "false_alarm_share": float(np.mean([flags[u] > 0 for u in stayed])) if stayed else float("nan"),
        "flags_before_shift_per_listener": float(np.mean(list(before.values()))) if before else 0.0,
    }
    return curve, detection


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--shift-at", type=int, default=50_000)
    ap.add_argument("--share", type=float, default=0.5)
    ap.add_argument("--fade", type=float, default=0.3, help="what a detected shift keeps of the profile")
    ap.add_argument("--delta", type=float, default=0.002, help="ADWIN's delta (larger: sooner, more false alarms)")
    ap.add_argument("--told", action="store_true", help="the react run is told who moved (fades them at the "
                    "shift): the best any detector could do with this reaction")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--listeners", type=int, default=300)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows, curves = [], []
    for name, fade in (("told" if args.told else "react", args.fade), ("ignore", 1.0)):
        print(f"{name}: fade {fade}, {args.events:,} events, {100 * args.share:.0f}% of listeners shift at "
              f"{args.shift_at:,}", flush=True)
        curve, det = one(fade, args)
        after, o_after = curve.rate_between(args.shift_at, args.shift_at + 20_000)
        last, o_last = curve.rate_last(10_000)
        rows.append({"run": name, "fade": fade, "pct_oracle_20k_after_shift": after / o_after,
                     "pct_oracle_last_10k": last / o_last, **det})
        curves.append((name, curve))
    print(f"\n{'run':<7} {'%oracle 20k after':>17} {'%oracle last 10k':>16} {'recall':>7} {'false alarms':>12}")
    for r in rows:
        print(f"{r['run']:<7} {100 * r['pct_oracle_20k_after_shift']:>16.1f}% {100 * r['pct_oracle_last_10k']:>15.1f}% "
              f"{100 * r['recall']:>6.0f}% {100 * r['false_alarm_share']:>11.0f}%")
    gain = rows[0]["pct_oracle_20k_after_shift"] - rows[1]["pct_oracle_20k_after_shift"]
    print(f"\nreacting to detected shifts: {100 * gain:+.1f} points of the oracle in the 20k events after the shift")
    (args.out / "taste_shift.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                           "rows": rows}, indent=1))
    plot(curves, args.shift_at, args.out / "taste_shift.png")
    print(f"plot: {args.out / 'taste_shift.png'}")


def plot(curves: list[tuple[str, Curve]], shift_at: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, c in curves:
        ax.plot(*c.share_per_window(), marker=".", label=name)
    ax.axvline(shift_at, color="k", ls=":", label="tastes shift")
    ax.set(xlabel="events", ylabel="% of the oracle's reward rate, per 5k events",
           title="Recovering from a taste shift: fade the profile on ADWIN's alarm, or not")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
