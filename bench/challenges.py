"""Gamification inside the recommender: what the challenge reward term buys and costs.

    python -m bench.challenges                       # 60k events, bonus 0 / 0.5 / 1.0, seed 7
    python -m bench.challenges --events 30000 --bonuses 0,1

LinUCB serves the simulator's listeners with the goals of ``deploy/config/gamification.toml``
that a recommendation can advance (``genre_hopper``: finish 5 genres; ``artist_scout``: 10 new
artists) as the ``challenge_advance`` feature, and with each ``--bonuses`` value as the extra
reward for a finished track that advanced an open goal (0: the goals are context only, the
worker's default). Reported per bonus: the share of listeners who reached each goal by several
points of the run (the recommender's count of what they finished), and the reward rate as % of
the oracle's in the last 10k events. Writes ``bench/out/challenges.json`` and ``.png``.

The simulated listeners do not care about goals (their completions do not depend on them), so
this measures the trade a product owner decides on: goals reached sooner, against reward.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from agents.gamify import Rules
from bench.closed_loop import run
from online_models.challenges import goals_from
from online_models.policy import HybridPolicy, make_policy
from streams.settings import ROOT

OUT = Path(__file__).resolve().parent / "out"
EVERY = 200  # slates between two counts of the goals reached


def one(bonus: float, goals: tuple, args: argparse.Namespace) -> dict:
    kept: dict = {}
    reached: list[tuple[int, dict[str, float]]] = []

    def factory(world, rules) -> HybridPolicy:  # noqa: ANN001
        kept["policy"] = make_policy("linucb", world.catalogue, rules=rules, goals=goals, challenge_bonus=bonus)
        kept["n"] = len(world.listeners)
        return kept["policy"]  # type: ignore[return-value]

    def count(decided, session) -> None:  # noqa: ANN001
        kept["slates"] = kept.get("slates", 0) + 1
        if kept["slates"] % EVERY:
            return
        profiles = kept["policy"].gen.profiles.values()
        done = {g.id: sum((len(p.artist_pos) if g.stat == "new_artists" else int((p.genre_pos > 0).sum())) >= g.target
                          for p in profiles) / kept["n"] for g in goals}
        reached.append((kept["slates"], done))

    curve = run(f"linucb bonus {bonus}", events=args.events, seed=args.seed, n_listeners=args.listeners,
                factory=factory, on_slate=count)
    last, o_last = curve.rate_last(10_000)
    events = [curve.events[s - 1] for s, _ in reached]
    return {"bonus": bonus, "pct_oracle_last_10k": last / o_last,
            "reward_per_impression": curve.reward[-1] / curve.impressions[-1],
            "events": events, "reached": {g.id: [d[g.id] for _, d in reached] for g in goals}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--bonuses", default="0,0.5,1.0")
    ap.add_argument("--rules", type=Path, default=ROOT / "deploy" / "config" / "gamification.toml")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--listeners", type=int, default=300)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    goals = goals_from(Rules.from_toml(args.rules).achievements)
    print(f"goals a slate can advance: {', '.join(f'{g.id} ({g.stat} >= {g.target})' for g in goals)}", flush=True)
    rows = []
    for b in (float(x) for x in args.bonuses.split(",")):
        print(f"bonus {b}: {args.events:,} events", flush=True)
        rows.append(one(b, goals, args))
    marks = [m for m in (5_000, 10_000, 20_000, args.events) if m <= args.events]
    print(f"\n{'bonus':>5} {'%oracle last 10k':>16} " + " ".join(f"{g.id + ' @' + format(m, ',')[:-4] + 'k':>18}"
                                                          for g in goals for m in marks))
    for r in rows:
        ev = np.array(r["events"])
        cells = []
        for g in goals:
            for m in marks:
                j = int(np.searchsorted(ev, m, side="right")) - 1
                cells.append(f"{100 * r['reached'][g.id][j]:>17.0f}%" if j >= 0 else f"{'-':>18}")
        print(f"{r['bonus']:>5g} {100 * r['pct_oracle_last_10k']:>15.1f}% " + " ".join(cells))
    print("(share of the listeners who reached each goal by that many events)")
    (args.out / "challenges.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                          "rows": rows}, indent=1))
    plot(rows, goals, args.out / "challenges.png")
    print(f"plot: {args.out / 'challenges.png'}")


def plot(rows: list[dict], goals: tuple, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(goals), figsize=(6 * len(goals), 4.5), squeeze=False)
    for ax, g in zip(axes[0], goals, strict=True):
        for r in rows:
            ax.plot(r["events"], [100 * x for x in r["reached"][g.id]],
                    label=f"bonus {r['bonus']:g} ({100 * r['pct_oracle_last_10k']:.1f}% of oracle)")
        ax.set(title=f"{g.id}: {g.stat} >= {g.target}", xlabel="events", ylabel="% of listeners who reached it")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
