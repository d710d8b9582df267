"""Can one policy's live log judge another? Off-policy estimates against the closed loop.

    python -m bench.ope_check                        # seed 7, temperature 0.05
    python -m bench.ope_check --warmup 20000 --events 40000 --temperature 0.05 --floor 0.05

1. **Warm-up**: LinUCB learns in the simulator (communities world, 300 listeners) for
   ``--warmup`` events; its state is kept.
2. **Log**: the same LinUCB, frozen, serves stochastic slates (``temperature`` > 0: each
   position drawn with P ∝ exp(score / temperature), the worker's setting) for ``--events``
   events. For every slate the top position's logged propensity, reward (the listener's
   expected completion of that track) and, for each *target* policy, the probability the target
   gives the logged track on the same candidates, are written down.
3. **Estimate**: IPS, SNIPS and doubly robust (reward model: the frozen LinUCB's own prediction)
   estimate each target's top-position reward from that log alone.
4. **Truth**: each target then serves the same listeners (same seed, same frozen state) in the
   closed loop; its measured top-position reward is what the estimates must predict.

Targets: ``greedy`` (the deterministic LinUCB ranking served before), ``exploit`` (the model's
mean prediction, no exploration bonus), ``hotter`` (4x the temperature), ``popular`` (the most
popular candidate in the context), ``uniform`` (any candidate). The goal: every estimate within
10% of the target's actual reward, for every target the log overlaps enough to judge (effective
sample size sum(w)^2 / sum(w^2) of at least ``--min-ess``; the others are reported as such). Writes ``bench/out/ope_check.json`` and ``.png``.

Why the top position: its candidates and rules do not depend on what the policy placed above
it, so its propensity is a single exact number; lower positions condition on the picks above
them and an estimator over whole slates multiplies ten of them (variance far beyond any use).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.closed_loop import run
from online_models.evaluation import doubly_robust, ips, snips
from online_models.features import COLUMN
from online_models.linear import LinUCB
from online_models.policy import HybridPolicy, make_policy
from online_models.slate import Chooser

OUT = Path(__file__).resolve().parent / "out"
GOAL = 0.10
MIN_ESS = 100  # fewer effective samples than this: the log says too little about the target to judge it
TARGETS = ("greedy", "exploit", "hotter", "popular", "uniform")


def _softmax(s: np.ndarray, t: float, allowed: np.ndarray) -> np.ndarray:
    z = np.where(allowed, s / t, -np.inf)
    w = np.exp(z - z.max())
    return w / w.sum()


def _onehot(s: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    p = np.zeros(len(s))
    p[int(np.argmax(np.where(allowed, s, -np.inf)))] = 1.0
    return p


def target_probs(name: str, ucb: np.ndarray, exploit: np.ndarray, X: np.ndarray, allowed: np.ndarray,
                 temperature: float) -> np.ndarray:
    """P(row) under target ``name`` at a position where ``allowed`` rows may go."""
    if name == "greedy":
        return _onehot(ucb, allowed)
    if name == "exploit":
        return _onehot(exploit, allowed)
    if name == "hotter":
        return _softmax(ucb, 4 * temperature, allowed)
    if name == "popular":
        return _onehot(X[:, COLUMN["context_popularity"]], allowed)
    if name == "uniform":
        return allowed / allowed.sum()
    raise ValueError(f"unknown target {name!r}; choose from {TARGETS}")


@dataclass
class Log:
    propensity: list[float] = field(default_factory=list)
    target: dict[str, list[float]] = field(default_factory=lambda: {t: [] for t in TARGETS})
    q_logged: list[float] = field(default_factory=list)
    q_target: dict[str, list[float]] = field(default_factory=lambda: {t: [] for t in TARGETS})
    reward: list[float] = field(default_factory=list)


class FrozenLinUCB(LinUCB):
    """The warmed-up LinUCB, frozen. ``rule`` None: its own (stochastic) chooser, the logger,
    which writes the top position's record to ``log``; else a target's rule at every position."""

    def __init__(self, base: LinUCB, rule: str | None, log: Log | None = None) -> None:
        super().__init__(base.d, alpha=base.alpha, l2=base.l2, link=base.link, temperature=base.temperature,
                         floor=base.floor, explore_positions=base.explore_positions)
        self.A_inv, self.b = base.A_inv.copy(), base.b.copy()
        self.rule, self.log = rule, log

    def update(self, X: np.ndarray, rewards: np.ndarray, offset: np.ndarray | float = 0.0
               ) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(len(X)), np.ones(len(X))  # frozen: the policy compared is fixed

    def chooser(self, X: np.ndarray, rng: np.random.Generator, offset: np.ndarray | None = None,
                spread: np.ndarray | None = None, state: object = None) -> Chooser:
        X = self._check(X)
        off = offset if offset is not None else 0.0
        ucb = self.scores(X) + off + (spread if spread is not None else 0.0)
        exploit = X @ self.theta + off
        if self.rule is not None:
            def choose_target(allowed: np.ndarray) -> tuple[int, float, float]:
                p = target_probs(self.rule, ucb, exploit, X, allowed, self.temperature)  # type: ignore[arg-type]
                i = int(rng.choice(len(p), p=p))
                return i, float(p[i]), float(ucb[i])
            return choose_target
        inner = super().chooser(X, rng, offset, spread)  # the production chooser: what is measured
        first = [True]
        q = np.clip(exploit, 0.0, 1.0)

        def choose(allowed: np.ndarray) -> tuple[int, float, float]:
            i, p, s = inner(allowed)
            if first[0] and self.log is not None:
                first[0] = False
                self.log.propensity.append(p)
                self.log.q_logged.append(float(q[i]))
                for t in TARGETS:
                    pt = target_probs(t, ucb, exploit, X, allowed, self.temperature)
                    self.log.target[t].append(float(pt[i]))
                    self.log.q_target[t].append(float(pt @ q))
            return i, p, s
        return choose


def frozen_factory(blob: bytes, rule: str | None, log: Log | None, temperature: float, floor: float) -> Callable:
    def make(world, rules) -> HybridPolicy:  # noqa: ANN001
        policy = make_policy("linucb", world.catalogue, rules=rules, temperature=temperature, floor=floor)
        policy.restore(blob)
        policy.ranker = FrozenLinUCB(policy.ranker, rule, log)  # type: ignore[arg-type]
        return policy
    return make


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warmup", type=int, default=30_000, help="events LinUCB learns from before it is frozen")
    ap.add_argument("--events", type=int, default=40_000, help="events in the log, and in each target's run")
    ap.add_argument("--temperature", type=float, default=0.05, help="the logging LinUCB's softmax temperature")
    ap.add_argument("--floor", type=float, default=0.05,
                    help="share of the logging draw that is uniform over the candidates (support for any target)")
    ap.add_argument("--min-ess", type=float, default=MIN_ESS,
                    help="targets whose effective sample size in the log is below this are reported, not judged")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--listeners", type=int, default=300)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    common = {"seed": args.seed, "n_listeners": args.listeners}

    kept: list[HybridPolicy] = []

    def warm(world, rules) -> HybridPolicy:  # noqa: ANN001
        kept.append(make_policy("linucb", world.catalogue, rules=rules, temperature=args.temperature,
                               floor=args.floor))  # type: ignore[arg-type]
        return kept[0]

    print(f"1/4 warm-up: LinUCB (temperature {args.temperature}) learns for {args.warmup:,} events", flush=True)
    run("linucb", events=args.warmup, factory=warm, **common)
    blob = kept[0].snapshot()

    print(f"2/4 log: the frozen LinUCB serves {args.events:,} events, stochastic", flush=True)
    log = Log()
    top_reward: list[float] = []

    def record(decided, session) -> None:  # noqa: ANN001
        if decided.slate.picks:
            top_reward.append(float(session.p_complete[decided.slate.picks[0].track_idx]))

    logger_curve = run("logger", events=args.events, factory=frozen_factory(blob, None, log, args.temperature, args.floor),
                       on_slate=record, **common)
    log.reward = top_reward
    r, p = np.array(log.reward), np.array(log.propensity)
    logged = float(r.mean())
    print(f"   {len(r):,} slates logged; top-position reward {logged:.4f}; propensity median {np.median(p):.3f}, "
          f"min {p.min():.4f}", flush=True)

    print("3/4 estimates from the log alone; 4/4 each target in the closed loop", flush=True)
    rows = []
    for t in TARGETS:
        pt, qt, ql = np.array(log.target[t]), np.array(log.q_target[t]), np.array(log.q_logged)
        est = {"ips": ips(r, pt, p), "snips": snips(r, pt, p), "dr": doubly_robust(r, pt, p, ql, qt)}
        w = pt / p
        ess = float(w.sum() ** 2 / (w**2).sum()) if w.any() else 0.0
        actual: list[float] = []
        tc = run(f"target-{t}", events=args.events, factory=frozen_factory(blob, t, None, args.temperature, args.floor),
            on_slate=lambda d, ses, acc=actual: acc.append(float(ses.p_complete[d.slate.picks[0].track_idx]))
            if d.slate.picks else None,
            progress=False, **common)
        truth = float(np.mean(actual))
        se = float(np.std(actual) / np.sqrt(len(actual)))
        errs = {k: (v - truth) / truth for k, v in est.items()}
        rows.append({"target": t, "actual": truth, "actual_se": se, "slates": len(actual), "ess": ess,
                     "reward_per_impression": tc.reward[-1] / tc.impressions[-1], **est,
                     **{f"{k}_error": e for k, e in errs.items()}})
        print(f"   {t:<8} actual {truth:.4f} (±{se:.4f})  IPS {est['ips']:.4f} ({100 * errs['ips']:+.1f}%)  "
              f"SNIPS {est['snips']:.4f} ({100 * errs['snips']:+.1f}%)  DR {est['dr']:.4f} ({100 * errs['dr']:+.1f}%)  "
              f"ESS {ess:,.0f}", flush=True)

    judged = [row for row in rows if row["ess"] >= args.min_ess]
    for row in rows:
        if row["ess"] < args.min_ess:
            print(f"   {row['target']}: effective sample size {row['ess']:.0f} < {args.min_ess:.0f}: the log overlaps "
                  "this target too little to judge it (log longer, or with a higher --floor)")
    worst = max((abs(row[f"{k}_error"]) for row in judged for k in ("ips", "snips", "dr")), default=float("nan"))
    print(f"\nlogger (LinUCB, temperature {args.temperature}) top-position reward {logged:.4f}; "
          f"greedy would get {rows[0]['actual']:.4f}: exploring costs "
          f"{100 * (1 - logged / rows[0]['actual']):.1f}% of the top position's reward")
    slate_log = logger_curve.reward[-1] / logger_curve.impressions[-1]
    print(f"whole slates: logger {slate_log:.4f} per impression, greedy {rows[0]['reward_per_impression']:.4f}: "
          f"exploring costs {100 * (1 - slate_log / rows[0]['reward_per_impression']):.1f}% of the reward")
    print(f"worst estimate error over the {len(judged)} targets judged {100 * worst:.1f}% "
          f"(goal: every estimate within {100 * GOAL:.0f}%): {'met' if worst <= GOAL else 'NOT met'}")
    (args.out / "ope_check.json").write_text(json.dumps({
        "args": {k: str(v) for k, v in vars(args).items()}, "logged_reward": logged, "slates_logged": len(r),
        "logger_reward_per_impression": logger_curve.reward[-1] / logger_curve.impressions[-1],
        "targets": rows, "judged": [r["target"] for r in judged], "worst_error": worst, "goal": GOAL}, indent=1))
    plot(rows, args.out / "ope_check.png")
    print(f"plot: {args.out / 'ope_check.png'}")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    x = np.arange(len(rows))
    ax.bar(x - 0.3, [r["actual"] for r in rows], 0.2, yerr=[2 * r["actual_se"] for r in rows], label="actual (closed loop)")
    for j, k in enumerate(("ips", "snips", "dr")):
        ax.bar(x - 0.1 + 0.2 * j, [r[k] for r in rows], 0.2, label=k.upper())
    ax.set_xticks(x, [r["target"] for r in rows])
    ax.set(ylabel="top-position expected completion", title="Off-policy estimates from one LinUCB log vs each policy's actual reward")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
