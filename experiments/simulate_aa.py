"""A/A simulations: experiments with no effect, analysed by each test, to measure how often the
test cries wolf. A test at alpha = 0.05 must reject about 5% of them (within the binomial band);
the sequential test at most 5% however often it is peeked at. Also the two counter-examples:
a t-test peeked at repeatedly (too many rejections) and an injected SRM (must be flagged).

`make bench-experiments` (bench/experiments_aa.py) runs them at 5,000 experiments each with a plot.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats as sps

from experiments import stats as S

ALPHA = 0.05
Trial = Callable[[np.random.Generator], bool]  # one simulated experiment -> rejected?


def _welch(rng: np.random.Generator) -> bool:
    minutes = rng.gamma(0.8, 40, (2, 300))  # skewed, like listening time per listener
    return S.welch("minutes", minutes[0], minutes[1]).p_value < ALPHA


def _proportions(rng: np.random.Generator) -> bool:
    n = 800
    a, b = rng.binomial(n, 0.3), rng.binomial(n, 0.3)
    return S.proportions("returned", a, n, b, n).p_value < ALPHA


def _ratio(rng: np.random.Generator) -> bool:
    plays = rng.poisson(15, (2, 300)) + 1
    skips = rng.binomial(plays, rng.beta(2, 5, (2, 300)))  # each listener their own skip rate
    return S.ratio_metric("skip rate", skips[0], plays[0], skips[1], plays[1]).p_value < ALPHA


def _cuped(rng: np.random.Generator) -> bool:
    pre = rng.gamma(2, 30, (2, 300))
    y = 0.8 * pre + rng.normal(0, 20, (2, 300))
    return S.cuped("minutes", y[0], pre[0], y[1], pre[1]).p_value < ALPHA


def _logrank(rng: np.random.Generator) -> bool:
    days = rng.exponential(10, (2, 200))
    seen = np.minimum(days, 14)  # observation ends at day 14: later churn is censored
    return S.logrank(seen[0], days[0] <= 14, seen[1], days[1] <= 14)[1] < ALPHA


def _msprt_peeking(rng: np.random.Generator) -> bool:
    y = rng.normal(5, 2, (2, 1000))
    return bool(S.msprt_path(y[0], y[1], tau=0.2)[-1] < ALPHA)  # rejected at ANY of the ~2,000 looks


def _welch_peeking(rng: np.random.Generator) -> bool:
    y = rng.normal(5, 2, (2, 1000))
    looks = np.linspace(50, 1000, 20).astype(int)
    return any(sps.ttest_ind(y[0, :k], y[1, :k], equal_var=False).pvalue < ALPHA for k in looks)


def _srm_clean(rng: np.random.Generator) -> bool:
    arms = rng.binomial(20_000, 0.5)
    return S.srm({"a": arms, "b": 20_000 - arms}).mismatch


def _srm_injected(rng: np.random.Generator) -> bool:
    arms = rng.binomial(200_000, 0.5)
    lost = rng.binomial(200_000 - arms, 0.03)  # 3% of B's exposures never logged
    return S.srm({"a": arms, "b": 200_000 - arms - lost}).mismatch


AA_TESTS: dict[str, tuple[float, Trial]] = {  # name -> (alpha it must hold, one trial)
    "welch t": (ALPHA, _welch),
    "two-proportion z": (ALPHA, _proportions),
    "delta-method ratio": (ALPHA, _ratio),
    "CUPED welch t": (ALPHA, _cuped),
    "log-rank": (ALPHA, _logrank),
    "msprt (peeking every unit)": (ALPHA, _msprt_peeking),
    "srm (no mismatch)": (S.SRM_ALPHA, _srm_clean),
}
COUNTER: dict[str, tuple[float, Trial]] = {
    "welch t (peeking 20 times)": (ALPHA, _welch_peeking),
    "srm (3% of B lost)": (S.SRM_ALPHA, _srm_injected),
}


def band(alpha: float, sims: int, level: float = 0.99) -> tuple[float, float]:
    """The range of rejection rates that ``sims`` experiments of a test with true rate ``alpha``
    produce with probability ``level`` (binomial quantiles)."""
    lo, hi = sps.binom.ppf([(1 - level) / 2, (1 + level) / 2], sims, alpha)
    return float(lo / sims), float(hi / sims)


def run_aa(name: str, sims: int = 1000, seed: int = 0) -> float:
    """The share of ``sims`` simulated experiments in which the test rejected."""
    _, trial = {**AA_TESTS, **COUNTER}[name]
    rng = np.random.default_rng(seed)
    return sum(trial(rng) for _ in range(sims)) / sims
