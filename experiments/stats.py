"""The statistics of an A/B test, on one row per randomisation unit (a listener).

Each test compares a treatment arm against the control and returns a :class:`Comparison`: both
arms' values, the relative lift with its confidence interval, and a p-value. The libraries do
the work (scipy, statsmodels, lifelines); what is written here is the glue and the two pieces no
library ships: the delta method for a ratio of means and the always-valid sequential test.

- :func:`srm` — sample-ratio mismatch, chi-square goodness of fit (scipy).
- :func:`welch` — difference of means, Welch's t-test (scipy); lift CI by the delta method.
- :func:`proportions` — difference of rates, two-proportion z-test; ratio CI (statsmodels).
- :func:`ratio_metric` — a ratio of sums over units (skips / plays per listener), delta method.
- :func:`cuped` — Welch on the outcome adjusted by its pre-period covariate (CUPED).
- :func:`msprt` — an always-valid p-value (mixture SPRT) that may be peeked at after every unit.
- :func:`survival` — Kaplan–Meier curves (lifelines) and the log-rank test (statsmodels).
- :func:`power_means` / :func:`power_proportions` — sample size and achieved power (statsmodels).
- :func:`adjust` — Holm or Benjamini–Hochberg over several metrics (statsmodels).

Lift is ``treatment / control - 1``. Its interval comes from the delta method on the ratio of the
two arms' means: Var(R) ≈ R² (Var(m_t)/m_t² + Var(m_c)/m_c²), the arms being independent.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy import stats

SRM_ALPHA = 0.001  # the usual threshold: an SRM is a bug in assignment or logging, not chance


@dataclass(frozen=True)
class Comparison:
    metric: str
    test: str
    control: float  # the control arm's mean (or rate)
    treatment: float
    lift: float  # treatment / control - 1
    lift_low: float
    lift_high: float
    p_value: float
    n_control: int
    n_treatment: int
    p_adjusted: float | None = None  # after a multiple-testing correction (see :func:`adjust`)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def p(self) -> float:
        """The p-value to read: adjusted when a correction was applied."""
        return self.p_value if self.p_adjusted is None else self.p_adjusted

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("metric", "test", "control", "treatment", "lift", "lift_low",
                                             "lift_high", "p_value", "p_adjusted", "n_control", "n_treatment")}
        return {**out, **self.extra}


def _z(alpha: float) -> float:
    return float(stats.norm.ppf(1 - alpha / 2))


def ratio_lift(m_c: float, var_c: float, m_t: float, var_t: float, alpha: float = 0.05) -> tuple[float, float, float]:
    """Relative lift ``m_t / m_c - 1`` and its delta-method interval, from each arm's mean and
    the variance of that mean."""
    if m_c == 0:
        return float("nan"), float("nan"), float("nan")
    r = m_t / m_c
    se = abs(r) * np.sqrt(var_t / m_t**2 + var_c / m_c**2) if m_t != 0 else np.sqrt(var_t) / abs(m_c)
    return float(r - 1), float(r - 1 - _z(alpha) * se), float(r - 1 + _z(alpha) * se)


# --- allocation ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SRM:
    counts: dict[str, int]
    expected: dict[str, float]
    chi2: float
    p_value: float
    mismatch: bool  # p < SRM_ALPHA: the split is not what was configured


def srm(counts: dict[str, int], weights: dict[str, float] | None = None, alpha: float = SRM_ALPHA) -> SRM:
    """Are the units split as configured? ``weights`` per arm (equal when omitted)."""
    arms = list(counts)
    w = np.array([(weights or {}).get(a, 1.0) for a in arms], dtype=float)
    observed = np.array([counts[a] for a in arms], dtype=float)
    expected = w / w.sum() * observed.sum()
    chi2, p = stats.chisquare(observed, expected)
    return SRM(dict(counts), dict(zip(arms, expected.tolist(), strict=True)), float(chi2), float(p), bool(p < alpha))


# --- fixed-horizon tests ------------------------------------------------------------------------
def welch(metric: str, control: np.ndarray, treatment: np.ndarray, alpha: float = 0.05,
          test: str = "welch t") -> Comparison:
    """Difference of means with unequal variances (Welch); lift interval by the delta method."""
    c, t = np.asarray(control, dtype=float), np.asarray(treatment, dtype=float)
    res = stats.ttest_ind(t, c, equal_var=False)
    ci = res.confidence_interval(1 - alpha)
    lift, lo, hi = ratio_lift(c.mean(), c.var(ddof=1) / len(c), t.mean(), t.var(ddof=1) / len(t), alpha)
    return Comparison(metric, test, float(c.mean()), float(t.mean()), lift, lo, hi, float(res.pvalue), len(c), len(t),
                      extra={"difference": float(t.mean() - c.mean()), "diff_low": float(ci.low),
                             "diff_high": float(ci.high)})


def proportions(metric: str, successes_c: int, n_c: int, successes_t: int, n_t: int,
                alpha: float = 0.05) -> Comparison:
    """Difference of two rates: the two-proportion z-test (pooled variance, the same p-value as
    the 2×2 chi-square without continuity correction); lift interval on the ratio of rates
    (log method), both from statsmodels."""
    from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

    _, p = proportions_ztest([successes_t, successes_c], [n_t, n_c])
    lo, hi = confint_proportions_2indep(successes_t, n_t, successes_c, n_c, compare="ratio", method="log",
                                        alpha=alpha)
    d_lo, d_hi = confint_proportions_2indep(successes_t, n_t, successes_c, n_c, compare="diff", method="wald",
                                            alpha=alpha)
    rc, rt = successes_c / n_c, successes_t / n_t
    return Comparison(metric, "two-proportion z", rc, rt, rt / rc - 1 if rc else float("nan"), float(lo) - 1,
                      float(hi) - 1, float(p), n_c, n_t,
                      extra={"difference": rt - rc, "diff_low": float(d_lo), "diff_high": float(d_hi)})


def _ratio_mean_var(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
    """R = sum(num) / sum(den) over units and the delta-method variance of R."""
    n = len(num)
    mx, my = den.mean(), num.mean()
    r = my / mx
    cov = np.cov(num, den, ddof=1)
    var = (cov[0, 0] - 2 * r * cov[0, 1] + r**2 * cov[1, 1]) / (n * mx**2)
    return float(r), float(var)


def ratio_metric(metric: str, num_c: np.ndarray, den_c: np.ndarray, num_t: np.ndarray, den_t: np.ndarray,
                 alpha: float = 0.05) -> Comparison:
    """A rate whose denominator is not the unit (skips per play, with listeners randomised):
    plays of one listener are not independent, so the variance comes from the delta method over
    units, not from a binomial over plays."""
    rc, vc = _ratio_mean_var(np.asarray(num_c, float), np.asarray(den_c, float))
    rt, vt = _ratio_mean_var(np.asarray(num_t, float), np.asarray(den_t, float))
    se = np.sqrt(vc + vt)
    p = float(2 * stats.norm.sf(abs(rt - rc) / se)) if se > 0 else (1.0 if rt == rc else 0.0)
    lift, lo, hi = ratio_lift(rc, vc, rt, vt, alpha)
    return Comparison(metric, "delta-method ratio", rc, rt, lift, lo, hi, p,
                      len(num_c), len(num_t), extra={"difference": rt - rc})


def cuped(metric: str, y_c: np.ndarray, x_c: np.ndarray, y_t: np.ndarray, x_t: np.ndarray,
          alpha: float = 0.05) -> Comparison:
    """CUPED (Deng et al. 2013): subtract θ(x − x̄) from the outcome, θ = cov(y, x) / var(x) over
    both arms, x the same metric before the experiment. Unbiased (x is independent of the arm)
    and with variance shrunk by corr(x, y)². Lift is relative to the control's raw mean."""
    y = np.concatenate([y_c, y_t]).astype(float)
    x = np.concatenate([x_c, x_t]).astype(float)
    theta = float(np.cov(y, x, ddof=1)[0, 1] / x.var(ddof=1)) if x.var() > 0 else 0.0
    adj_c = np.asarray(y_c, float) - theta * (np.asarray(x_c, float) - x.mean())
    adj_t = np.asarray(y_t, float) - theta * (np.asarray(x_t, float) - x.mean())
    res = welch(metric, adj_c, adj_t, alpha, test="CUPED welch t")
    raw_var = np.var(y_c, ddof=1) / len(y_c) + np.var(y_t, ddof=1) / len(y_t)
    adj_var = adj_c.var(ddof=1) / len(adj_c) + adj_t.var(ddof=1) / len(adj_t)
    return replace(res, control=float(np.mean(y_c)), treatment=float(np.mean(y_t)),
                   extra={**res.extra, "theta": theta, "variance_reduction": float(1 - adj_var / raw_var)})


# --- always-valid (sequential) ------------------------------------------------------------------
def msprt(metric: str, control: np.ndarray, treatment: np.ndarray, tau: float | None = None,
          alpha: float = 0.05, min_n: int = 20) -> Comparison:
    """Mixture sequential probability ratio test (Johari, Pekelis & Walsh, "Always valid
    inference", 2017) on the difference of means, with a N(0, τ²) mixture over the effect.

    The arrays are in arrival order. After every arrival (once both arms hold ``min_n`` units),
    with d the difference of means and v its variance (plug-in), the likelihood ratio is
    Λ = sqrt(v / (v + τ²)) · exp(τ² d² / (2 v (v + τ²))); the always-valid p-value is the running
    minimum of 1 / Λ. Stopping the first time it falls below α keeps the false-positive rate
    at most α however often one peeks. The interval is the running intersection of the sets
    {θ : Λ(d − θ) < 1/α}, so it excludes 0 exactly when p < α. ``tau`` defaults to a tenth of
    the pooled standard deviation (effects of that order are what it finds fastest)."""
    c, t = np.asarray(control, float), np.asarray(treatment, float)
    p_path, lo, hi = _msprt(c, t, tau, min_n, alpha)
    p = float(p_path[-1]) if len(p_path) else 1.0
    lift, _, _ = ratio_lift(c.mean(), c.var(ddof=1) / len(c), t.mean(), t.var(ddof=1) / len(t), alpha)
    m = c.mean()
    return Comparison(metric, "mSPRT (always valid)", float(m), float(t.mean()), lift,
                      lo / m if m else float("nan"), hi / m if m else float("nan"), p, len(c), len(t),
                      extra={"difference": float(t.mean() - m), "diff_low": lo, "diff_high": hi, "tau": tau})


def _default_tau(c: np.ndarray, t: np.ndarray) -> float:
    sd = np.sqrt((c.var(ddof=1) + t.var(ddof=1)) / 2)
    return float(0.1 * sd) if sd > 0 else 1.0


def _running(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count, mean and unbiased variance after each element (vectorised cumulative sums)."""
    n = np.arange(1, len(a) + 1, dtype=float)
    s, s2 = np.cumsum(a), np.cumsum(a * a)
    mean = s / n
    var = np.where(n > 1, (s2 - n * mean**2) / np.maximum(n - 1, 1), np.nan)
    return n, mean, np.maximum(var, 0)


def _msprt(c: np.ndarray, t: np.ndarray, tau: float | None, min_n: int,
           alpha: float = 0.05) -> tuple[np.ndarray, float, float]:
    """The always-valid p-value after each arrival, and the always-valid interval on the
    difference at the last one. Arrivals interleave the arms on a common clock (unit i of an
    arm of n units arrives at i/n): for one-row-per-unit data in arrival order, the order seen."""
    tau = _default_tau(c, t) if tau is None else tau
    clock = np.concatenate([np.arange(1, len(c) + 1) / len(c), np.arange(1, len(t) + 1) / len(t)])
    arm = np.concatenate([np.zeros(len(c), bool), np.ones(len(t), bool)])[np.argsort(clock, kind="stable")]
    nc, mc, vc = _running(c)
    nt, mt, vt = _running(t)
    ic, it = np.cumsum(~arm) - 1, np.cumsum(arm) - 1  # each arm's running stats at each arrival
    ok = (ic >= min_n - 1) & (it >= min_n - 1)
    ic, it = ic[ok], it[ok]
    if not len(ic):
        return np.ones(0), float("-inf"), float("inf")
    d = mt[it] - mc[ic]
    v = np.maximum(vc[ic] / nc[ic] + vt[it] / nt[it], 1e-300)
    log_lr = 0.5 * np.log(v / (v + tau**2)) + tau**2 * d**2 / (2 * v * (v + tau**2))
    p = np.minimum.accumulate(np.minimum(1.0, np.exp(-log_lr)))
    half = np.sqrt(v * (v + tau**2) / tau**2 * (2 * np.log(1 / alpha) + np.log((v + tau**2) / v)))
    return p, float(np.max(d - half)), float(np.min(d + half))


def msprt_path(control: np.ndarray, treatment: np.ndarray, tau: float | None = None, min_n: int = 20) -> np.ndarray:
    """The always-valid p-value after every arrival (for plots and for peeking simulations)."""
    return _msprt(np.asarray(control, float), np.asarray(treatment, float), tau, min_n)[0]


# --- retention ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Survival:
    comparison: Comparison  # log-rank; control / treatment hold the median survival time
    curves: dict[str, dict[str, list[float]]]  # arm -> timeline, survival, lower, upper


def logrank(dur_c: np.ndarray, ev_c: np.ndarray, dur_t: np.ndarray, ev_t: np.ndarray) -> tuple[float, float]:
    """The log-rank test of two arms: (chi-square, p) from statsmodels' ``survdiff`` (the same
    statistic as lifelines' ``logrank_test``, ~100× faster, which the A/A simulations need)."""
    from statsmodels.duration.survfunc import survdiff

    time = np.concatenate([dur_c, dur_t]).astype(float)
    status = np.concatenate([ev_c, ev_t]).astype(int)
    if not status.any():  # no churn observed in either arm yet: nothing to compare
        return 0.0, 1.0
    group = np.repeat([0, 1], [len(dur_c), len(dur_t)])
    chi2, p = survdiff(time, status, group)
    return float(chi2), float(p)


def survival(metric: str, dur_c: np.ndarray, ev_c: np.ndarray, dur_t: np.ndarray, ev_t: np.ndarray,
             alpha: float = 0.05, labels: tuple[str, str] = ("control", "treatment")) -> Survival:
    """Kaplan–Meier per arm (lifelines) and the log-rank test (:func:`logrank`). ``dur`` is time
    to the event (or to the end of observation) and ``ev`` is 1 when the event (churn) was
    observed, 0 when censored. Lift compares the survival at the last time both arms reach."""
    from lifelines import KaplanMeierFitter

    chi2, p = logrank(dur_c, ev_c, dur_t, ev_t)
    curves, fits = {}, []
    for label, d, e in ((labels[0], dur_c, ev_c), (labels[1], dur_t, ev_t)):
        km = KaplanMeierFitter(alpha=alpha).fit(d, e, label=label)
        ci = km.confidence_interval_survival_function_
        curves[label] = {"timeline": km.timeline.tolist(), "survival": km.survival_function_.iloc[:, 0].tolist(),
                         "lower": ci.iloc[:, 0].tolist(), "upper": ci.iloc[:, 1].tolist()}
        fits.append(km)
    horizon = float(min(np.max(dur_c), np.max(dur_t)))
    s_c, s_t = (float(km.survival_function_at_times(horizon).iloc[0]) for km in fits)
    comp = Comparison(metric, "log-rank", float(fits[0].median_survival_time_), float(fits[1].median_survival_time_),
                      s_t / s_c - 1 if s_c else float("nan"), float("nan"), float("nan"), p,
                      len(dur_c), len(dur_t),
                      extra={"chi2": chi2, "horizon": horizon, "survival_control": s_c, "survival_treatment": s_t})
    return Survival(comp, curves)


# --- design and corrections ---------------------------------------------------------------------
def power_means(sd: float, baseline: float, mde: float, alpha: float = 0.05, power: float = 0.8,
                n: int | None = None) -> float:
    """Units per arm to detect a relative lift ``mde`` on a mean ``baseline`` with standard
    deviation ``sd``; with ``n`` given, the power achieved instead (two-sided t-test)."""
    from statsmodels.stats.power import tt_ind_solve_power

    effect = abs(baseline * mde) / sd
    if n is not None:
        return float(tt_ind_solve_power(effect_size=effect, nobs1=n, alpha=alpha, ratio=1.0))
    return float(tt_ind_solve_power(effect_size=effect, alpha=alpha, power=power, ratio=1.0))


def power_proportions(rate: float, mde: float, alpha: float = 0.05, power: float = 0.8,
                      n: int | None = None) -> float:
    """Units per arm to detect a relative lift ``mde`` on a rate (Cohen's h, normal test); with
    ``n``, the power achieved."""
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    h = abs(proportion_effectsize(min(rate * (1 + mde), 1.0), rate))
    if n is not None:
        return float(NormalIndPower().power(effect_size=h, nobs1=n, alpha=alpha, ratio=1.0))
    return float(NormalIndPower().solve_power(effect_size=h, alpha=alpha, power=power, ratio=1.0))


def adjust(results: list[Comparison], method: str = "holm") -> list[Comparison]:
    """Correct the p-values of several metrics: ``holm`` (family-wise error) or ``fdr_bh``
    (Benjamini–Hochberg, false discovery rate)."""
    from statsmodels.stats.multitest import multipletests

    if not results:
        return []
    _, p_adj, _, _ = multipletests([r.p_value for r in results], method=method)
    return [replace(r, p_adjusted=float(p)) for r, p in zip(results, p_adj, strict=True)]
