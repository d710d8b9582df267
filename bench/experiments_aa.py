"""A/A false-positive rates of every experiment test, next to the goal (alpha, inside the 99%
binomial band; the sequential test at most alpha under continuous peeking), with the two
counter-examples: a t-test peeked at 20 times, and an injected sample-ratio mismatch.
Saves bench/out/experiments_aa.png.

    make bench-experiments          # python -m bench.experiments_aa --sims 5000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from experiments.simulate_aa import AA_TESTS, COUNTER, band

OUT = Path(__file__).resolve().parent / "out"


def main(argv: list[str] | None = None) -> None:
    from rich.progress import Progress

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sims", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    rows = []
    tests = {**AA_TESTS, **COUNTER}
    with Progress() as progress:
        task = progress.add_task("A/A experiments", total=args.sims * len(tests))
        for name, (alpha, trial) in tests.items():
            rng = np.random.default_rng(args.seed)
            hits = 0
            for _ in range(args.sims):
                hits += trial(rng)
                progress.advance(task)
            rate, (lo, hi) = hits / args.sims, band(alpha, args.sims)
            if name in COUNTER:
                goal = "> 0.95 (flagged)" if "srm" in name else f"> {hi:.4f} (shows the problem)"
                met = rate > 0.95 if "srm" in name else rate > hi
            elif "peeking" in name:
                goal, met = f"<= {hi:.4f}", rate <= hi
            else:
                goal, met = f"in [{lo:.4f}, {hi:.4f}]", lo <= rate <= hi
            rows.append({"test": name, "alpha": alpha, "rate": rate, "low": lo, "high": hi, "goal": goal, "met": met})
    print(f"\nA/A, {args.sims:,} simulated experiments per test (99% binomial band around alpha)")
    print(f"{'test':34s} {'alpha':>6s} {'rejected':>9s}  goal")
    for r in rows:
        print(f"{r['test']:34s} {r['alpha']:6g} {r['rate']:9.4f}  {r['goal']:26s} {'met' if r['met'] else 'NOT met'}")
    OUT.mkdir(exist_ok=True)
    (OUT / "experiments_aa.json").write_text(json.dumps({"sims": args.sims, "rows": rows}, indent=2))
    plot(rows, OUT / "experiments_aa.png", args.sims)
    print(f"plot: {OUT / 'experiments_aa.png'}")


def plot(rows: list[dict], path: Path, sims: int) -> None:  # type: ignore[type-arg]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, r in enumerate(rows):
        colour = "tab:green" if r["met"] else "tab:red"
        ax.barh(i, r["rate"], color=colour, alpha=0.7)
        ax.plot([r["low"], r["high"]], [i, i], color="black", lw=3, alpha=0.5)
    ax.set_yticks(range(len(rows)), [r["test"] for r in rows])
    ax.set_xscale("symlog", linthresh=0.01)
    ax.axvline(0.05, color="grey", ls=":", label="alpha 0.05")
    ax.set_xlabel("share of experiments rejected (black: 99% band around the test's alpha)")
    ax.set_title(f"A/A experiments ({sims:,} per test): false-positive rate per test")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
