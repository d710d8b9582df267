"""Mood: does the session estimate find the simulator's hidden mood, and is it worth reward?

    python -m bench.mood_check                       # mood sd 0.15, 100k events, seed 7
    python -m bench.mood_check --events 40000 --mood-sd 0.1

In this world every session draws a hidden mood: an offset to the tempo, energy and valence the
listener wants today (``World(mood_sd=...)``). LinUCB serves it twice on the same seed:

- **with mood**: the session estimate of :mod:`online_models.mood` moves the content candidates
  and feeds the ``mood_match`` feature and the explanations;
- **without**: the same policy with the estimate switched off.

Reported: how the estimate (at each slate, once the session has at least ``--min-plays``
plays) agrees with the hidden mood, per audio feature (correlation; error against
guessing no mood at all); the share of explanations that name a mood and how often the
named direction is right; and the reward rate as % of the oracle's in the last 10k events with
and without it. Writes ``bench/out/mood_check.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench.closed_loop import Curve, run
from online_models.catalogue import FEATURES
from online_models.policy import HybridPolicy, make_policy

OUT = Path(__file__).resolve().parent / "out"
DIMS = 3  # the mood moves tempo, energy and valence


def one(use_mood: bool, args: argparse.Namespace) -> tuple[Curve, dict]:
    kept: dict = {}
    est, truth, said = [], [], []

    def factory(world, rules) -> HybridPolicy:  # noqa: ANN001
        policy = make_policy("linucb", world.catalogue, rules=rules)
        policy.gen.use_mood = use_mood
        kept["policy"] = policy
        return policy  # type: ignore[return-value]

    def record(decided, session) -> None:  # noqa: ANN001
        prof = kept["policy"].gen.profiles.get(session.listener.user_id)
        m = prof.mood if prof is not None else None
        if m is not None and m.session_id == session.session_id and m.n >= args.min_plays:
            est.append(m.offset[:DIMS].copy())
            truth.append(session.mood[:DIMS].copy())
        for p in decided.slate.picks:
            if p.explanation.startswith(("something calmer", "something livelier")):
                said.append((p.explanation.startswith("something calmer"), float(session.mood[1])))

    curve = run("linucb" + (" + mood" if use_mood else ""), events=args.events, seed=args.seed,
                n_listeners=args.listeners, factory=factory, mood_sd=args.mood_sd, on_slate=record)
    out: dict = {"slates_estimated": len(est)}
    if est:
        e, t = np.array(est), np.array(truth)
        out["correlation"] = {FEATURES[d]: float(np.corrcoef(e[:, d], t[:, d])[0, 1]) for d in range(DIMS)}
        out["rmse"] = {FEATURES[d]: float(np.sqrt(np.mean((e[:, d] - t[:, d]) ** 2))) for d in range(DIMS)}
        out["rmse_no_mood"] = {FEATURES[d]: float(np.sqrt(np.mean(t[:, d] ** 2))) for d in range(DIMS)}
    n_items = curve.impressions[-1]
    out["mood_explanations"] = len(said)
    out["mood_explanation_right"] = float(np.mean([calm == (energy < 0) for calm, energy in said])) if said else None
    out["items_served_about"] = n_items
    return curve, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--mood-sd", type=float, default=0.15, help="spread of the hidden session moods")
    ap.add_argument("--min-plays", type=float, default=4.0, help="plays in the session before its estimate is judged")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--listeners", type=int, default=300)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows, curves = {}, {}
    for name, flag in (("with mood", True), ("without", False)):
        print(f"{name}: {args.events:,} events, hidden session moods sd {args.mood_sd}", flush=True)
        curves[name], rows[name] = one(flag, args)
        last, o_last = curves[name].rate_last(10_000)
        rows[name]["pct_oracle_last_10k"] = last / o_last
    w = rows["with mood"]
    print(f"\nthe estimate against the hidden mood ({w['slates_estimated']:,} slates with >= {args.min_plays:g} "
          "plays in the session so far):")
    for f in FEATURES[:DIMS]:
        print(f"  {f:<8} correlation {w['correlation'][f]:+.2f}   error {w['rmse'][f]:.3f} "
              f"(guessing no mood: {w['rmse_no_mood'][f]:.3f})")
    if w["mood_explanations"]:
        print(f"explanations naming a mood: {w['mood_explanations']:,}; the direction named is the hidden one "
              f"{100 * w['mood_explanation_right']:.0f}% of the time")
    for name, r in rows.items():
        print(f"{name:<10} {100 * r['pct_oracle_last_10k']:.1f}% of the oracle in the last 10k events")
    gain = w["pct_oracle_last_10k"] - rows["without"]["pct_oracle_last_10k"]
    print(f"the mood is worth {100 * gain:+.1f} points of the oracle")
    (args.out / "mood_check.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                          "rows": rows}, indent=1))
    plot(curves, args.out / "mood_check.png")
    print(f"plot: {args.out / 'mood_check.png'}")


def plot(curves: dict[str, Curve], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, c in curves.items():
        ax.plot(*c.share_per_window(), marker=".", label=name)
    ax.set(xlabel="events", ylabel="% of the oracle's reward rate, per 5k events",
           title="LinUCB in a world of session moods, with and without the mood estimate")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
