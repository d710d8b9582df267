"""An Encore experiment's report, from ClickHouse:

    python -m experiments.report NAME [--json] [--plot retention.png] [--mde 0.05]

One row per exposed listener (``experiment_exposures``: their arm and first exposure), with
what they did from that moment (``events``):

- ``minutes`` listened, ``sessions``, ``plays``;
- ``skip_rate`` (skips / plays), ``like_rate`` (likes / plays), ``completion_rate``
  (completions / plays): ratios of sums per listener, tested with the delta method;
- ``returned_d1`` / ``returned_d7``: active on a calendar day (UTC) at least 1 / 7 days after the
  day of exposure (listeners exposed less than 1 / 7 days before the newest data are left out);
- ``days_active`` (retention): days from exposure to the last activity, churn observed when the
  listener has been silent for ``--churn-days`` (3; use 1 for a simulation of a few days) before
  the newest data, censored otherwise;
- ``minutes_before``: minutes in the 7 days before exposure, the CUPED covariate.

With a chDB store (one process only), the report asks the worker that owns it
(``GET /api/dashboard/experiment?name=NAME``); with a ClickHouse server it reads directly.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments.analysis import Analysis, analyze_frame

Query = Callable[[str, dict[str, Any]], list[dict[str, Any]]]
RATIOS = (("skips", "plays"), ("likes", "plays"), ("completions", "plays"))
RATIO_NAMES = {"skip_rate": ("skips", "plays"), "like_rate": ("likes", "plays"),
               "completion_rate": ("completions", "plays")}
METRICS = ("minutes", "sessions", "plays", "returned_d1", "returned_d7")
LOWER_IS_BETTER = frozenset({"skips / plays"})  # for guardrails: which direction is harm


def experiments_seen(q: Query) -> list[dict[str, Any]]:
    return q("SELECT experiment, arm, uniqExact(user_id) AS listeners, min(exposed_at) AS first, "
             "max(exposed_at) AS last FROM experiment_exposures GROUP BY experiment, arm ORDER BY experiment, arm", {})


def listener_frame(q: Query, experiment: str, churn_days: float = 3.0) -> pd.DataFrame:
    """One row per exposed listener: arm, first exposure, and the outcomes above."""
    rows = q("""
        WITH exposed AS (
            SELECT user_id, argMin(arm, exposed_at) AS first_arm, min(exposed_at) AS first_exposed
            FROM experiment_exposures FINAL WHERE experiment = {exp:String} GROUP BY user_id
        )
        SELECT x.user_id AS user_id, any(x.first_arm) AS arm, any(x.first_exposed) AS exposed_at,
            sumIf(e.listened_ms, e.occurred_at >= x.first_exposed AND e.kind IN ('play_end', 'skip')) / 60000
                AS minutes,
            uniqExactIf(e.session_id, e.occurred_at >= x.first_exposed) AS sessions,
            countIf(e.occurred_at >= x.first_exposed AND e.kind IN ('play_end', 'skip')) AS plays,
            countIf(e.occurred_at >= x.first_exposed AND e.kind = 'skip') AS skips,
            countIf(e.occurred_at >= x.first_exposed AND e.kind = 'like') AS likes,
            countIf(e.occurred_at >= x.first_exposed AND e.kind = 'play_end') AS completions,
            maxIf(e.occurred_at, e.occurred_at >= x.first_exposed) AS last_seen,
            sumIf(e.listened_ms, e.occurred_at < x.first_exposed
                  AND e.occurred_at >= x.first_exposed - INTERVAL 7 DAY AND e.kind IN ('play_end', 'skip')) / 60000
                AS minutes_before,
            (SELECT max(occurred_at) FROM events) AS newest
        FROM exposed AS x LEFT JOIN (SELECT * FROM events FINAL) AS e ON e.user_id = x.user_id
        GROUP BY x.user_id
        ORDER BY exposed_at, user_id
    """, {"exp": experiment})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    for col in ("exposed_at", "last_seen", "newest"):
        df[col] = pd.to_datetime(df[col], utc=True)
    day = pd.Timedelta(days=1)
    df["last_seen"] = df["last_seen"].where(df["last_seen"] >= df["exposed_at"], df["exposed_at"])
    since = (df["last_seen"] - df["exposed_at"]) / day  # days active after exposure
    # returns count in calendar days (UTC): back on day 1 = active on any later day than the first
    days_back = (df["last_seen"].dt.normalize() - df["exposed_at"].dt.normalize()) / day
    observed = (df["newest"].dt.normalize() - df["exposed_at"].dt.normalize()) / day
    df["returned_d1"] = np.where(observed >= 1, (days_back >= 1).astype(float), np.nan)
    df["returned_d7"] = np.where(observed >= 7, (days_back >= 7).astype(float), np.nan)
    df["days_active"] = since
    df["churned"] = ((df["newest"] - df["last_seen"]) / day >= churn_days).astype(int)
    return df


def analyse(q: Query, experiment: str, *, primary: str | None = None, mde: float = 0.05, alpha: float = 0.05,
            weights: dict[str, float] | None = None, churn_days: float = 3.0,
            guardrails: tuple[str, ...] = ()) -> Analysis:
    df = listener_frame(q, experiment, churn_days)
    if df.empty:
        raise ValueError(f"no exposures for experiment {experiment!r} yet: is it running "
                         "(python -m experiments list) and have its listeners asked for a slate?")
    metrics = [m for m in METRICS if df[m].notna().sum() >= 4]
    def name(m: str) -> str:  # a ratio is analysed under its ratio's name
        return f"{RATIO_NAMES[m][0]} / {RATIO_NAMES[m][1]}" if m in RATIO_NAMES else m

    return analyze_frame(df, unit="user_id", arm="arm", metrics=metrics, pre="minutes_before",
                         duration="days_active", event="churned", ratios=list(RATIOS), weights=weights, alpha=alpha,
                         mde=mde, primary=name(primary or "minutes"), guardrails=[name(g) for g in guardrails],
                         lower_is_better=LOWER_IS_BETTER)


def declared(name: str) -> tuple[str | None, dict[str, float] | None, tuple[str, ...]]:
    """The experiment's primary metric, arm weights and guardrails, from the declarations."""
    from experiments.config import load_experiments
    from streams.settings import load_settings

    try:
        exp = next((e for e in load_experiments(load_settings().experiments_file) if e.name == name), None)
    except (OSError, ValueError):
        exp = None
    if exp is None:
        return None, None, ()
    return exp.primary, {a.name: a.weight for a in exp.arms}, exp.guardrails


def plot_retention(result: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    drawn = set()
    for surv in result.get("survival", {}).values():
        for arm, c in surv["curves"].items():
            if arm in drawn:
                continue
            drawn.add(arm)
            ax.step(c["timeline"], c["survival"], where="post", label=arm)
            ax.fill_between(c["timeline"], c["lower"], c["upper"], step="post", alpha=0.2)
    ax.set_xlabel("days since first exposure")
    ax.set_ylabel("share of listeners still active (Kaplan–Meier)")
    ax.set_title(title)
    ax.set_ylim(0, 1.02)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def from_worker(url: str, name: str, primary: str | None, mde: float, churn_days: float) -> dict[str, Any]:
    q = f"{url.rstrip('/')}/api/dashboard/experiment?name={urllib.parse.quote(name)}&mde={mde}&churn_days={churn_days}"
    if primary:
        q += f"&primary={urllib.parse.quote(primary)}"
    from streams.settings import service_headers

    with urllib.request.urlopen(urllib.request.Request(q, headers=service_headers()), timeout=120) as r:  # noqa: S310
        return json.loads(r.read())


def main(argv: list[str] | None = None) -> int:
    from experiments.analyze import print_analysis
    from streams.settings import load_settings

    ap = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--plot", type=Path, help="save the retention curves here (PNG)")
    ap.add_argument("--mde", type=float, default=0.05)
    ap.add_argument("--primary", help="primary metric (default: the declared one)")
    ap.add_argument("--churn-days", type=float, default=3.0, help="silent this long before the newest data = churned")
    ap.add_argument("--worker", help="a worker's base URL (default: http://127.0.0.1:ENCORE_WEB_PORT for chDB)")
    args = ap.parse_args(argv)
    settings = load_settings()
    primary, weights, guardrails = declared(args.name)
    primary = args.primary or primary
    try:
        if settings.clickhouse_dsn.startswith("chdb") or args.worker:
            url = args.worker or f"http://127.0.0.1:{settings.web_port}"
            try:
                result = from_worker(url, args.name, primary, args.mde, args.churn_days)
            except urllib.error.HTTPError as exc:
                print(f"error: {json.loads(exc.read()).get('error', exc)}", file=sys.stderr)
                return 2
            except urllib.error.URLError as exc:
                print(f"error: no worker answers at {url} ({exc.reason}); the chDB store is read through the worker "
                      "that owns it: start one (make demo) or pass --worker URL", file=sys.stderr)
                return 2
            analysis = None
        else:
            from sinks.clickhouse import ClickHouseStore

            analysis = analyse(ClickHouseStore(settings.clickhouse_dsn).query, args.name, primary=primary,
                               mde=args.mde, weights=weights, churn_days=args.churn_days, guardrails=guardrails)
            result = json.loads(json.dumps(analysis.as_dict(), default=float))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.plot:
        plot_retention(result, args.plot, f"Retention in {args.name}")
    if args.json:
        print(json.dumps(result, indent=2))
    elif analysis is not None:
        print_analysis(analysis)
    else:
        print_analysis(Analysis.from_dict(result))
    if args.plot:
        print(f"retention curves: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
