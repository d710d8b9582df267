"""Analyse any A/B test from a file with one row per unit (CSV or Parquet):

    python -m experiments.analyze results.csv --unit-col user --arm-col arm \\
        --metric minutes --metric returned_d7 [--pre-col minutes_before] \\
        [--duration-col days_active --event-col churned] [--ratio skips:plays] [--json]

Prints every test the columns allow: the sample-ratio check; per metric, Welch's t-test (or the
two-proportion z-test for a 0/1 metric) with the relative lift and its interval, the
always-valid mSPRT p-value (rows taken in file order as arrival order), CUPED with --pre-col,
the delta method for --ratio NUM:DEN, Kaplan–Meier and the log-rank test with --duration-col /
--event-col; power for --mde; Holm (or --correction fdr_bh) over all fixed-horizon tests.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd

from experiments.analysis import Analysis, analyze_frame


def read_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise SystemExit(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if suffix in (".csv", ".tsv", ".txt"):
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    raise SystemExit(f"{path}: unknown format {suffix!r}; give a .csv, .tsv or .parquet file")


def _num(x: float, fmt: str = ".4g") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def print_analysis(a: Analysis) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=None if sys.stdout.isatty() else 160)
    srm = a.srm
    con.print(f"[bold]Allocation[/bold] {', '.join(f'{k}: {v:,}' for k, v in a.arms.items())} (control: {a.control})  "
              f"SRM chi-square p = {srm.p_value:.3g} -> "
              + ("[red]MISMATCH: the split is not as configured[/red]" if srm.mismatch else "ok"))
    table = Table(title=f"Fixed-horizon tests (alpha {a.alpha:g}; p adjusted over all rows)")
    for col in ("arm", "metric", "test", a.control, "treatment", "lift", "lift CI", "p", "p adj."):
        table.add_column(col, justify="right" if col not in ("arm", "metric", "test") else "left")
    for r in a.results:
        table.add_row(str(r.extra.get("arm")), r.metric, r.test, _num(r.control), _num(r.treatment), _num(r.lift, "+.2%"),
                      f"[{_num(r.lift_low, '+.2%')}, {_num(r.lift_high, '+.2%')}]", _num(r.p_value, ".3g"),
                      _num(r.p_adjusted, ".3g") if r.p_adjusted is not None else "-")
    con.print(table)
    seq = Table(title="Always-valid (mSPRT) p-values: safe to read at any time")
    for col in ("arm", "metric", "difference", "lift CI (always valid)", "p"):
        seq.add_column(col)
    for r in a.sequential:
        seq.add_row(str(r.extra.get("arm")), r.metric, _num(r.extra["difference"]),
                    f"[{_num(r.lift_low, '+.2%')}, {_num(r.lift_high, '+.2%')}]", _num(r.p_value, ".3g"))
    con.print(seq)
    if a.power:
        pw = Table(title=f"Power for a {a.mde:.0%} relative lift")
        for col in ("arm", "metric", "units per arm needed (80%)", "power now"):
            pw.add_column(col)
        for p in a.power:
            pw.add_row(p["arm"], p["metric"], _num(p["units_per_arm_for_mde"], ",.0f"), _num(p["power_now"], ".0%"))
        con.print(pw)
    for note in a.notes:
        con.print(f"[yellow]note:[/yellow] {note}")
    con.print(f"\n[bold]Verdict[/bold]\n{a.verdict}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.analyze", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", type=Path, help="CSV, TSV or Parquet; one row per unit")
    ap.add_argument("--unit-col", required=True)
    ap.add_argument("--arm-col", required=True)
    ap.add_argument("--metric", action="append", default=[], help="a metric column (repeat); 0/1 columns are rates")
    ap.add_argument("--pre-col", help="the metric before the experiment, per unit (CUPED)")
    ap.add_argument("--duration-col", help="time to churn or to the end of observation (retention)")
    ap.add_argument("--event-col", help="1 if churn was observed, 0 if censored")
    ap.add_argument("--ratio", action="append", default=[], help="NUM:DEN, a ratio of sums (delta method)")
    ap.add_argument("--control", help="the control arm (default: 'control', 'A', or the first in order)")
    ap.add_argument("--weights", help="configured split, e.g. control=0.5,treatment=0.5 (default: equal)")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--mde", type=float, default=0.05, help="relative lift the power figures are for")
    ap.add_argument("--correction", choices=("holm", "fdr_bh"), default="holm")
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = ap.parse_args(argv)
    if not args.metric and not args.ratio and not args.duration_col:
        ap.error("give at least one --metric, --ratio or --duration-col/--event-col")
    try:
        ratios = [tuple(r.split(":", 1)) for r in args.ratio]
        if any(len(r) != 2 for r in ratios):
            raise ValueError("--ratio takes NUM:DEN (two column names)")
        weights = None
        if args.weights:
            weights = {k: float(v) for k, v in (kv.split("=", 1) for kv in args.weights.split(","))}
        result = analyze_frame(read_table(args.file), unit=args.unit_col, arm=args.arm_col, metrics=args.metric,
                               pre=args.pre_col, duration=args.duration_col, event=args.event_col,
                               ratios=ratios, control=args.control, weights=weights, alpha=args.alpha,
                               correction=args.correction, mde=args.mde)  # type: ignore[arg-type]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.as_dict(), indent=2, default=float))
    else:
        print_analysis(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
