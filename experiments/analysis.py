"""One experiment's analysis from a table with one row per unit: the allocation check, every
metric against the control (fixed-horizon and always-valid), CUPED where a pre-period column
exists, retention curves, power, a multiple-testing correction and a plain-language verdict.

Used by ``python -m experiments.analyze`` (any CSV / Parquet) and ``python -m
experiments.report`` (an Encore experiment, read from ClickHouse).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from experiments import stats as S


@dataclass
class Analysis:
    arms: dict[str, int]  # arm -> units
    control: str
    srm: S.SRM
    results: list[S.Comparison]  # fixed-horizon tests, corrected together
    sequential: list[S.Comparison]  # always-valid p-values (safe to read at any time)
    survival: dict[str, S.Survival] = field(default_factory=dict)  # treatment arm -> KM + log-rank
    power: list[dict[str, Any]] = field(default_factory=list)
    primary: str | None = None
    alpha: float = 0.05
    mde: float = 0.05
    notes: list[str] = field(default_factory=list)
    verdict: str = ""
    guardrails: list[str] = field(default_factory=list)  # metrics that must not get worse

    def as_dict(self) -> dict[str, Any]:
        return {"arms": self.arms, "control": self.control, "alpha": self.alpha, "mde": self.mde,
                "srm": {"counts": self.srm.counts, "expected": self.srm.expected, "chi2": self.srm.chi2,
                        "p_value": self.srm.p_value, "mismatch": self.srm.mismatch},
                "results": [dict(r.as_dict(), arm=r.extra.get("arm")) for r in self.results],
                "sequential": [r.as_dict() for r in self.sequential],
                "survival": {arm: {"logrank": s.comparison.as_dict(), "curves": s.curves}
                             for arm, s in self.survival.items()},
                "power": self.power, "primary": self.primary, "guardrails": self.guardrails, "notes": self.notes,
                "verdict": self.verdict}


    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Analysis:
        """Back from :meth:`as_dict` (a report fetched from a worker as JSON)."""
        fields = ("metric", "test", "control", "treatment", "lift", "lift_low", "lift_high", "p_value",
                  "n_control", "n_treatment", "p_adjusted")

        def comp(r: dict[str, Any]) -> S.Comparison:
            return S.Comparison(**{k: r.get(k) for k in fields},  # type: ignore[arg-type]
                                extra={k: v for k, v in r.items() if k not in fields})

        srm = S.SRM(d["srm"]["counts"], d["srm"]["expected"], d["srm"]["chi2"], d["srm"]["p_value"],
                    d["srm"]["mismatch"])
        survival = {arm: S.Survival(comp(s["logrank"]), s["curves"]) for arm, s in d.get("survival", {}).items()}
        return cls(d["arms"], d["control"], srm, [comp(r) for r in d["results"]], [comp(r) for r in d["sequential"]],
                   survival, d.get("power", []), d.get("primary"), d.get("alpha", 0.05), d.get("mde", 0.05),
                   d.get("notes", []), d.get("verdict", ""), d.get("guardrails", []))


def is_binary(values: pd.Series) -> bool:
    v = values.dropna().unique()
    return len(v) > 0 and set(np.asarray(v, dtype=float).tolist()) <= {0.0, 1.0}


def pick_control(arms: list[str], control: str | None) -> str:
    if control is not None:
        if control not in arms:
            raise ValueError(f"control arm {control!r} not in the data (arms: {', '.join(arms)}); pass --control")
        return control
    for name in ("control", "A", "a", "baseline"):
        if name in arms:
            return name
    return sorted(arms)[0]


def analyze_frame(df: pd.DataFrame, *, unit: str, arm: str, metrics: list[str], pre: str | None = None,
                  duration: str | None = None, event: str | None = None, ratios: list[tuple[str, str]] | None = None,
                  control: str | None = None, weights: dict[str, float] | None = None, alpha: float = 0.05,
                  correction: str = "holm", mde: float = 0.05, primary: str | None = None,
                  guardrails: list[str] | None = None, lower_is_better: frozenset[str] = frozenset()) -> Analysis:
    """Every test the columns allow. One row per unit (the randomisation unit); rows are in
    arrival order for the sequential test."""
    need = [unit, arm, *metrics, *(c for c in (pre, duration, event) if c)]
    for num, den in ratios or []:
        need += [num, den]
    missing = [c for c in dict.fromkeys(need) if c not in df.columns]
    if missing:
        raise ValueError(f"column(s) {', '.join(missing)} not in the data (columns: {', '.join(map(str, df.columns))})")
    if (duration is None) != (event is None):
        raise ValueError("retention needs both --duration-col and --event-col")
    dup = int(df[unit].duplicated().sum())
    if dup:
        raise ValueError(f"{dup} unit(s) appear on more than one row: the analysis needs one row per {unit!r} "
                         "(aggregate per unit first: sum or mean the metric over the unit's rows)")
    df = df.copy()
    df[arm] = df[arm].astype(str)
    counts = df[arm].value_counts().to_dict()
    arms = sorted(counts)
    if len(arms) < 2:
        raise ValueError(f"the data holds one arm ({arms[0] if arms else 'none'}); an experiment needs two or more")
    ctl = pick_control(arms, control)
    notes = []
    srm = S.srm({a: int(counts[a]) for a in arms}, weights)
    results: list[S.Comparison] = []
    sequential: list[S.Comparison] = []
    power: list[dict[str, Any]] = []
    survival: dict[str, S.Survival] = {}
    c = df[df[arm] == ctl]
    for trt in (a for a in arms if a != ctl):
        t = df[df[arm] == trt]
        for m in metrics:
            cm, tm = c[m].dropna().to_numpy(float), t[m].dropna().to_numpy(float)
            if min(len(cm), len(tm)) < 2:
                notes.append(f"{m}: fewer than 2 units with a value in an arm; not tested")
                continue
            if is_binary(df[m]):
                r = S.proportions(m, int(cm.sum()), len(cm), int(tm.sum()), len(tm), alpha)
                rate = cm.mean()
                power.append({"metric": m, "arm": trt, "units_per_arm_for_mde": S.power_proportions(rate, mde, alpha)
                              if 0 < rate < 1 else float("nan"),
                              "power_now": S.power_proportions(rate, mde, alpha, n=min(len(cm), len(tm)))
                              if 0 < rate < 1 else float("nan")})
            else:
                r = S.welch(m, cm, tm, alpha)
                sd = float(np.sqrt((cm.var(ddof=1) + tm.var(ddof=1)) / 2))
                ok = sd > 0 and cm.mean() != 0
                power.append({"metric": m, "arm": trt,
                              "units_per_arm_for_mde": S.power_means(sd, cm.mean(), mde, alpha) if ok else float("nan"),
                              "power_now": S.power_means(sd, cm.mean(), mde, alpha, n=min(len(cm), len(tm)))
                              if ok else float("nan")})
            results.append(_tag(r, trt))
            sequential.append(_tag(S.msprt(m, cm, tm, alpha=alpha), trt))
            if pre and not is_binary(df[m]) and m != pre:
                both_c, both_t = c[[m, pre]].dropna(), t[[m, pre]].dropna()
                if min(len(both_c), len(both_t)) >= 2:
                    results.append(_tag(S.cuped(m, both_c[m].to_numpy(float), both_c[pre].to_numpy(float),
                                                both_t[m].to_numpy(float), both_t[pre].to_numpy(float), alpha), trt))
        for num, den in ratios or []:
            rc, rt = c[[num, den]].dropna(), t[[num, den]].dropna()
            results.append(_tag(S.ratio_metric(f"{num} / {den}", rc[num].to_numpy(float), rc[den].to_numpy(float),
                                               rt[num].to_numpy(float), rt[den].to_numpy(float), alpha), trt))
        if duration and event:
            sc, st = c[[duration, event]].dropna(), t[[duration, event]].dropna()
            surv = S.survival(duration, sc[duration].to_numpy(float), sc[event].to_numpy(bool),
                              st[duration].to_numpy(float), st[event].to_numpy(bool), alpha, labels=(ctl, trt))
            survival[trt] = surv
            if (sc[event].astype(bool).any() or st[event].astype(bool).any()):
                results.append(_tag(surv.comparison, trt))
            else:
                notes.append(f"{duration}: no churn observed yet in either arm; the log-rank test waits for some")
    results = S.adjust(results, correction)
    out = Analysis({a: int(counts[a]) for a in arms}, ctl, srm, results, sequential, survival, power,
                   primary or (metrics[0] if metrics else None), alpha, mde, notes, guardrails=list(guardrails or []))
    out.verdict = verdict(out, lower_is_better)
    return out


def _tag(r: S.Comparison, arm: str) -> S.Comparison:
    return S.Comparison(**{**r.__dict__, "extra": {**r.extra, "arm": arm}})


def verdict(a: Analysis, lower_is_better: frozenset[str] = frozenset()) -> str:
    """What a product person should take away, in words, from the primary metric and the rest."""
    if a.srm.mismatch:
        return (f"Do not read the results: the split is not what was configured (sample-ratio mismatch, "
                f"p = {a.srm.p_value:.2g}; units {a.srm.counts}). Look for a bug in assignment or exposure logging.")
    lines = []
    for arm in (x for x in a.arms if x != a.control):
        prim = [r for r in a.results if r.extra.get("arm") == arm and r.metric == a.primary
                and not r.test.startswith("CUPED")]
        cuped = [r for r in a.results if r.extra.get("arm") == arm and r.metric == a.primary and r.test.startswith("CUPED")]
        best = cuped[0] if cuped else (prim[0] if prim else None)
        if best is None:
            continue
        pw = next((p for p in a.power if p["arm"] == arm and p["metric"] == a.primary), None)
        if best.p < a.alpha:
            word = "raises" if best.lift > 0 else "lowers"
            lines.append(f"{arm} {word} {a.primary} by {best.lift:+.1%} (95% CI {best.lift_low:+.1%} to "
                         f"{best.lift_high:+.1%}, p = {best.p:.2g} after correction).")
        elif pw and pw["power_now"] == pw["power_now"] and pw["power_now"] < 0.8:
            more = max(0, int(np.ceil(pw["units_per_arm_for_mde"])) - min(a.arms[arm], a.arms[a.control]))
            lines.append(f"Cannot decide yet on {a.primary} for {arm}: no significant difference (p = {best.p:.2g}), "
                         f"but the test has only {pw['power_now']:.0%} power for a {a.mde:.0%} lift; about {more:,} "
                         f"more units per arm would give 80%.")
        else:
            lines.append(f"No detectable effect of {arm} on {a.primary} (p = {best.p:.2g}); a lift of "
                         f"{a.mde:.0%} or more would likely have been seen (interval {best.lift_low:+.1%} to "
                         f"{best.lift_high:+.1%}).")
        moved = [r for r in a.results if r.extra.get("arm") == arm and r.metric != a.primary and r.p < a.alpha]
        for g in a.guardrails:
            bad = [r for r in moved if r.metric == g and (r.lift > 0) == (g in lower_is_better)]
            if bad:
                lines.append(f"  GUARDRAIL BREACHED: {g} got worse in {arm} ({bad[0].lift:+.1%}, p = {bad[0].p:.2g}); "
                             "do not ship it as is.")
            elif any(r.metric == g and r.extra.get("arm") == arm for r in a.results):
                lines.append(f"  Guardrail {g}: no significant harm.")
        for r in moved:
            if r.metric not in a.guardrails:
                lines.append(f"  Also: {r.metric} moved {r.lift:+.1%} in {arm} (p = {r.p:.2g}, {r.test}).")
    return "\n".join(lines) or "Nothing to conclude: no primary metric could be tested."
