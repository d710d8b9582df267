"""Offline evaluation harness.

    python -m online_models.evaluate interactions FILE [--user-col user --item-col item
        --weight-col rating --time-col timestamp] [--split chrono|random] [--k 10] [--json]
    python -m online_models.evaluate bandit-feedback FILE --context-cols device,activity
        [--action-col action --reward-col reward --propensity-col propensity] [--json]

FILE is CSV or Parquet. ``interactions`` fits the collaborative models of
:mod:`online_models.latent` (popularity, item-kNN, EASE, ALS, BPR; LightGCN and Mult-VAE with
``--neural``) on the train part, on sparse matrices, and reports NDCG@k, Recall@2k, MRR@2k,
catalogue coverage and novelty per model on the test part, with a progress bar. ``bandit-feedback`` fits target policies on the train part (uniform, best action
overall, best action per context) and scores them on the test part with IPS, SNIPS and doubly
robust estimates over the logged propensities, next to the logging policy's own mean reward and
replay evaluation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from online_models import latent
from online_models.evaluation import doubly_robust, ips, replay, snips


def read_table(path: str) -> pd.DataFrame:
    p = Path(path)
    if not p.exists():
        raise SystemExit(f"{path}: no such file")
    try:
        df = pd.read_parquet(p) if p.suffix in (".parquet", ".pq") else pd.read_csv(p)
    except (ValueError, OSError, pd.errors.ParserError) as exc:  # EmptyDataError is a ValueError
        raise SystemExit(f"{path}: not a readable CSV or Parquet table ({exc})") from None
    if df.empty:
        raise SystemExit(f"{path}: the table has no rows")
    return df


def need(df: pd.DataFrame, cols: list[str], path: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise SystemExit(f"{path}: missing column(s) {missing}; it has {list(df.columns)} (name them with --*-col)")


def split(df: pd.DataFrame, how: str, test_frac: float, time_col: str | None, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    if how == "user-chrono":
        raise SystemExit("--split user-chrono is for interactions; use chrono or random")
    try:
        return latent.split_frame(df, how, test_frac, time_col, "", seed)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


# --- interactions ---------------------------------------------------------------------------


def evaluate_interactions(df: pd.DataFrame, *, user: str, item: str, weight: str | None, time: str | None,
                          how: str, test_frac: float, k: int, seed: int, models: list[str],
                          weighting: str = "log", progress: bool = True) -> dict[str, Any]:
    """Fit every model in ``models`` (see :mod:`online_models.latent`) on the train part and rank
    the catalogue for each listener with held-out items; all on sparse matrices."""
    try:
        train, test = latent.split_frame(df, how, test_frac, time, user, seed)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    tr, te = latent.matrices(df, train, test, user, item, weight, weighting)
    reports = latent.run_all(models, tr.matrix, te, k=k, k2=2 * k, seed=seed, progress=progress)
    return {
        "split": how, "train_rows": len(train), "test_rows": len(test), "k": k, "recall_k": 2 * k,
        "listeners": int(tr.matrix.shape[0]), "items": int(tr.matrix.shape[1]), "weighting": weighting,
        "policies": {name: r.__dict__ for name, r in reports.items()},
    }


# --- bandit feedback ------------------------------------------------------------------------


def evaluate_bandit(df: pd.DataFrame, *, context: list[str], action: str, reward: str, propensity: str,
                    how: str, test_frac: float, time: str | None, seed: int) -> dict[str, Any]:
    train, test = split(df, how, test_frac, time, seed)
    actions = sorted(df[action].unique().tolist())
    ctx_train = train[context].astype(str).agg("|".join, axis=1)
    ctx_test = test[context].astype(str).agg("|".join, axis=1)
    overall = train.groupby(action)[reward].mean()
    per_ctx = train.assign(_ctx=ctx_train).groupby(["_ctx", action])[reward].mean()

    def q(c: str, a: Any) -> float:
        if (c, a) in per_ctx.index:
            return float(per_ctx.loc[(c, a)])
        return float(overall.get(a, train[reward].mean()))

    best_overall = overall.idxmax()
    best_ctx = {c: max(actions, key=lambda a: q(c, a)) for c in ctx_test.unique()}
    policies: dict[str, Any] = {
        "uniform": lambda c: {a: 1 / len(actions) for a in actions},
        "best-action": lambda c: {best_overall: 1.0},
        "best-action-per-context": lambda c: {best_ctx[c]: 1.0},
    }
    r = test[reward].to_numpy(dtype=float)
    p = test[propensity].to_numpy(dtype=float)
    logged = test[action].tolist()
    q_logged = np.array([q(c, a) for c, a in zip(ctx_test, logged, strict=True)])
    out: dict[str, Any] = {"split": how, "train_rows": len(train), "test_rows": len(test), "actions": len(actions),
                           "logging_policy_mean_reward": float(r.mean()) if len(r) else float("nan"), "policies": {}}
    for name, pi in policies.items():
        dists = [pi(c) for c in ctx_test]
        target = np.array([d.get(a, 0.0) for d, a in zip(dists, logged, strict=True)])
        q_target = np.array([sum(prob * q(c, a) for a, prob in d.items()) for d, c in zip(dists, ctx_test, strict=True)])
        chosen = [max(d, key=d.get) for d in dists]
        replay_mean, matched = replay(r, logged, chosen)
        out["policies"][name] = {"ips": ips(r, target, p), "snips": snips(r, target, p),
                                 "dr": doubly_robust(r, target, p, q_logged, q_target),
                                 "replay": replay_mean, "replay_events": matched}
    return out


def table(result: dict[str, Any]) -> str:
    k, k2 = result["k"], result["recall_k"]
    lines = [f"{result['listeners']:,} listeners x {result['items']:,} items",
             f"{'model':<11} {f'NDCG@{k}':>8} {f'Recall@{k2}':>9} {f'MRR@{k2}':>7} {'coverage':>8} {'novelty':>7} "
             f"{'fit s':>7} {'rank s':>7}"]
    for name, r in result["policies"].items():
        lines.append(f"{name:<11} {r['ndcg']:>8.4f} {r['recall']:>9.4f} {r['mrr']:>7.4f} {r['coverage']:>8.3f} "
                     f"{r['novelty']:>7.2f} {r['fit_seconds']:>7.1f} {r['score_seconds']:>7.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m online_models.evaluate", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("interactions", "bandit-feedback"):
        p = sub.add_parser(name)
        p.add_argument("file")
        p.add_argument("--split", choices=["chrono", "random", "user-chrono"], default="random",
                       help="random rows; chrono: the last rows by time; user-chrono: each listener's last rows")
        p.add_argument("--test-frac", type=float, default=0.2)
        p.add_argument("--time-col", default=None)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p = sub.choices["interactions"]
    p.add_argument("--user-col", default="user")
    p.add_argument("--item-col", default="item")
    p.add_argument("--weight-col", default=None, help="rating or weight (default: every row weighs 1)")
    p.add_argument("--k", type=int, default=10, help="NDCG@k; recall and MRR at 2k")
    p.add_argument("--models", default=",".join(latent.DEFAULT),
                   help=f"comma-separated, from {','.join(latent.MODELS)} (default: {','.join(latent.DEFAULT)})")
    p.add_argument("--neural", action="store_true", help="add LightGCN and Mult-VAE (torch) to --models")
    p.add_argument("--weighting", choices=["log", "raw", "binary"], default="log",
                   help="how --weight-col enters the models: log1p (default; play counts are heavy-tailed), raw, or ignored")
    p = sub.choices["bandit-feedback"]
    p.add_argument("--context-cols", required=True, help="comma-separated context columns")
    p.add_argument("--action-col", default="action")
    p.add_argument("--reward-col", default="reward")
    p.add_argument("--propensity-col", default="propensity")
    args = ap.parse_args(argv)
    df = read_table(args.file)
    if args.command == "interactions":
        cols = [args.user_col, args.item_col] + [c for c in (args.weight_col, args.time_col) if c]
        need(df, cols, args.file)
        models = [m for m in args.models.split(",") if m]
        models += [m for m in sorted(latent.NEURAL) if args.neural and m not in models]
        unknown = [m for m in models if m not in latent.MODELS]
        if unknown:
            raise SystemExit(f"unknown model(s) {unknown}; choose from {', '.join(latent.MODELS)}")
        result = evaluate_interactions(df, user=args.user_col, item=args.item_col, weight=args.weight_col,
                                       time=args.time_col, how=args.split, test_frac=args.test_frac, k=args.k,
                                       seed=args.seed, models=models, weighting=args.weighting,
                                       progress=not args.json)
    else:
        context = [c for c in args.context_cols.split(",") if c]
        need(df, [*context, args.action_col, args.reward_col, args.propensity_col], args.file)
        result = evaluate_bandit(df, context=context, action=args.action_col, reward=args.reward_col,
                                 propensity=args.propensity_col, how=args.split, test_frac=args.test_frac,
                                 time=args.time_col, seed=args.seed)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.command}: train {result['train_rows']:,} rows, test {result['test_rows']:,} rows ({result['split']} split)")
        if args.command == "interactions":
            print(table(result))
            return 0
        for name, metrics in result["policies"].items():
            print(f"  {name:26} " + "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                             for k, v in metrics.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
