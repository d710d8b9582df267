"""Score + update throughput of the linear bandits, side by side with river and Vowpal Wabbit.

    python -m bench.bandit_throughput                     # 3000 events, 200 candidates, d=32
    python -m bench.bandit_throughput --events 1000 --river-events 300

One synthetic stream, the same for every learner: each event has a listener context u (d
numbers) and 200 candidate tracks out of a fixed pool; a candidate's feature vector is
x = u * v (element-wise; v is the track's hidden d-vector) and its true mean reward is
x . w* (unknown to the learners), observed with Gaussian noise. Each learner scores the 200
candidates, puts 10 in a slate, then learns from the 10 observed rewards. Per-event rate =
events / (score + update time); regret = sum over events of (best 10 true means - chosen 10).

- encore LinUCB / LinTS / eps-greedy: ``online_models.linear`` on X (200 x d).
- river LinUCBDisjoint: one Bayesian linear regression per track on the context u (d features,
  the disjoint formulation; still well specified because x . w* = u . (v * w*)). Its slate is
  the 10 highest upper confidence bounds, computed with the expression river's ``_pull`` uses;
  its update is river's ``update`` per shown track. Slow, so it runs ``--river-events``.
Inputs in each learner's own format (VW text lines, river dicts) are built outside the timed part.

- VW ``--cb_explore_adf --softmax``: shared namespace u, one action line per candidate with x;
  the slate is drawn without replacement from VW's pmf; each shown item is learned as a
  one-action example labelled with its cost (-reward) and probability.
Prints a table; writes bench/out/bandit_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from online_models.linear import EpsilonGreedyLinear, LinTS, LinUCB

OUT = Path(__file__).resolve().parent / "out"


class Stream:
    def __init__(self, d: int, pool: int, n_candidates: int, seed: int, noise: float = 0.1) -> None:
        rng = np.random.default_rng(seed)
        self.v = rng.normal(0, 1, (pool, d))
        self.w = rng.normal(0, 1, d) / np.sqrt(d)
        self.d, self.n, self.noise, self.seed = d, n_candidates, noise, seed

    def events(self, n: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        rng = np.random.default_rng(self.seed + 1)
        out = []
        for _ in range(n):
            u = rng.normal(0, 1, self.d)
            ids = rng.choice(len(self.v), self.n, replace=False)
            out.append((u, ids, u * self.v[ids]))
        return out

    def mean(self, X: np.ndarray) -> np.ndarray:
        return X @ self.w


def run(name: str, decide: Callable[..., np.ndarray], learn: Callable[..., None], stream: Stream, events: list,
        k: int, prepare: Callable[[np.ndarray, np.ndarray, np.ndarray], object] | None = None) -> dict[str, float]:
    """``prepare`` turns an event into the learner's own input format outside the timed part
    (VW's text lines, river's dicts): only scoring and updating are timed."""
    rng = np.random.default_rng(0)
    noise_rng = np.random.default_rng(1)
    regret, spent = 0.0, 0.0
    for u, ids, X in events:
        mu = stream.mean(X)
        if prepare is not None:
            u = prepare(u, ids, X)
        t0 = time.perf_counter()
        chosen = decide(u, ids, X, rng)
        spent += time.perf_counter() - t0
        r = mu[chosen] + noise_rng.normal(0, stream.noise, len(chosen))
        t0 = time.perf_counter()
        learn(u, ids, X, chosen, r)
        spent += time.perf_counter() - t0
        regret += np.sort(mu)[-k:].sum() - mu[chosen].sum()
    return {"learner": name, "events": len(events), "events_per_s": len(events) / spent,
            "us_per_event": 1e6 * spent / len(events), "regret": regret, "regret_per_event": regret / len(events)}


def encore(model: LinUCB | LinTS | EpsilonGreedyLinear, k: int) -> tuple[Callable, Callable]:
    def decide(u: np.ndarray, ids: np.ndarray, X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return model.rank(X, k, rng).indices

    def learn(u: np.ndarray, ids: np.ndarray, X: np.ndarray, chosen: np.ndarray, r: np.ndarray) -> None:
        model.update(X[chosen], r)

    return decide, learn


def river_prepare(u: np.ndarray, ids: np.ndarray, X: np.ndarray) -> dict[str, float]:
    return {f"u{i}": float(x) for i, x in enumerate(u)}


def river_linucb(k: int) -> tuple[Callable, Callable]:
    from river import bandit

    policy = bandit.LinUCBDisjoint(alpha=1.0, beta=1.0, seed=0)

    def decide(c: dict[str, float], ids: np.ndarray, X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        ub = []
        for a in ids:
            dist = policy._bayes_lin_regs[int(a)].predict_one(c, with_dist=True)  # as river's _pull does
            ub.append(dist.mu + dist.sigma)
        return np.argsort(-np.array(ub), kind="stable")[:k]

    def learn(c: dict[str, float], ids: np.ndarray, X: np.ndarray, chosen: np.ndarray, r: np.ndarray) -> None:
        for i, reward in zip(chosen, r, strict=True):
            policy.update(int(ids[i]), c, float(reward))

    return decide, learn


def vw_cb(k: int, d: int) -> tuple[Callable, Callable]:
    from vowpalwabbit import Workspace

    vw = Workspace("--cb_explore_adf --softmax --lambda 10 --quiet --random_seed 0 -b 18")
    last: dict[str, object] = {}

    def decide(prepared: tuple[str, list[str]], ids: np.ndarray, X: np.ndarray, rng: np.random.Generator
               ) -> np.ndarray:
        shared, lines = prepared
        pmf = np.asarray(vw.predict([shared, *lines]), dtype=float)
        pmf = pmf / pmf.sum()
        nz = int((pmf > 0).sum())
        chosen = rng.choice(len(pmf), size=min(k, nz), replace=False, p=pmf)
        last.update(shared=shared, lines=lines, pmf=pmf)
        return chosen

    def learn(prepared: object, ids: np.ndarray, X: np.ndarray, chosen: np.ndarray, r: np.ndarray) -> None:
        pmf, lines = last["pmf"], last["lines"]
        for i, reward in zip(chosen, r, strict=True):
            vw.learn([last["shared"], f"0:{-reward:.5f}:{max(pmf[i], 1e-6):.6f} {lines[i]}"])

    return decide, learn


def _feats(x: np.ndarray) -> str:
    return " ".join(f"f{i}:{v:.5f}" for i, v in enumerate(x))


def vw_prepare(u: np.ndarray, ids: np.ndarray, X: np.ndarray) -> tuple[str, list[str]]:
    """VW's text format, built outside the timed part."""
    return f"shared |u {_feats(u)}", [f"|a {_feats(x)}" for x in X]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=3000)
    ap.add_argument("--river-events", type=int, default=500)
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--slate", type=int, default=10)
    ap.add_argument("-d", type=int, default=32)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    stream = Stream(args.d, pool=2000, n_candidates=args.candidates, seed=args.seed)
    events = stream.events(args.events)
    k = args.slate
    rows = []
    learners = [
        ("encore LinUCB", lambda: encore(LinUCB(args.d, alpha=0.5), k), events, None),
        ("encore LinTS", lambda: encore(LinTS(args.d, v=0.1, propensity_draws=100), k), events, None),
        ("encore eps-greedy", lambda: encore(EpsilonGreedyLinear(args.d, epsilon=0.05), k), events, None),
        ("vw cb_explore_adf", lambda: vw_cb(k, args.d), events, vw_prepare),
        ("river LinUCBDisjoint", lambda: river_linucb(k), events[: args.river_events], river_prepare),
    ]
    print(f"{args.events:,} events, slate of {k} from {args.candidates} candidates, d={args.d}")
    for name, make, evs, prepare in learners:
        decide, learn = make()
        row = run(name, decide, learn, stream, evs, k, prepare)
        rows.append(row)
        print(f"  {name:<22} {row['events_per_s']:>9,.0f} events/s  {row['us_per_event']:>9,.0f} µs/event  "
              f"regret/event {row['regret_per_event']:.3f}  ({row['events']:,} events)", flush=True)
    vw = next(r for r in rows if r["learner"].startswith("vw"))
    print("\nrelative to VW (river's regret is over its shorter prefix, so not comparable):")
    for r in rows:
        print(f"  {r['learner']:<22} speed {r['events_per_s'] / vw['events_per_s']:>6.1f}x  "
              f"regret/event {r['regret_per_event']:.3f} vs VW {vw['regret_per_event']:.3f}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bandit_throughput.json").write_text(json.dumps({"args": vars(args), "results": rows}, indent=1))


if __name__ == "__main__":
    main()
