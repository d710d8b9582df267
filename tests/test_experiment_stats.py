"""The experiment statistics against reference implementations (scipy, statsmodels, lifelines),
published examples, and A/A simulations: over 1,000 simulated experiments with no effect, each
test rejects at a rate inside the binomial band around alpha (the sequential test under
continuous peeking too), and an injected sample-ratio mismatch is flagged.
`make bench-experiments` (bench/experiments_aa.py) prints the same rates with more simulations and a plot."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from experiments import stats as S
from experiments.simulate_aa import AA_TESTS, band, run_aa

RNG = np.random.default_rng(20261130)


def test_welch_matches_statsmodels() -> None:
    from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

    c, t = RNG.normal(10, 3, 400), RNG.normal(10.4, 4, 300)
    got = S.welch("m", c, t)
    cm = CompareMeans(DescrStatsW(t), DescrStatsW(c))
    _, p, _ = cm.ttest_ind(usevar="unequal")
    lo, hi = cm.tconfint_diff(usevar="unequal")
    assert got.p_value == pytest.approx(p, rel=1e-9)
    assert (got.extra["diff_low"], got.extra["diff_high"]) == pytest.approx((lo, hi), rel=1e-9)
    assert got.lift == pytest.approx(t.mean() / c.mean() - 1)
    assert got.lift_low < got.lift < got.lift_high


def test_proportions_match_the_chi_square_and_statsmodels_intervals() -> None:
    from statsmodels.stats.proportion import confint_proportions_2indep

    got = S.proportions("completion", 120, 1000, 150, 1000)
    chi2, p, _, _ = sps.chi2_contingency([[150, 850], [120, 880]], correction=False)
    assert got.p_value == pytest.approx(p, rel=1e-9)  # z² = chi-square without continuity correction
    lo, hi = confint_proportions_2indep(150, 1000, 120, 1000, compare="ratio", method="log")
    assert (got.lift_low, got.lift_high) == pytest.approx((lo - 1, hi - 1))
    assert got.lift == pytest.approx(0.25)


def test_srm_matches_the_chi_square_formula_and_flags_an_injected_mismatch() -> None:
    counts = {"a": 5000, "b": 5200}
    got = S.srm(counts)
    expected = 5100
    chi2 = sum((o - expected) ** 2 / expected for o in counts.values())
    assert got.chi2 == pytest.approx(chi2) and got.p_value == pytest.approx(sps.chi2.sf(chi2, 1))
    assert not got.mismatch  # p = 0.048: chance, at the SRM threshold of 0.001
    # a 50/50 split that lost 3% of one arm's units (a logging bug), as the simulations inject
    assert S.srm({"a": 50_000, "b": 48_500}).mismatch
    assert not S.srm({"a": 2_000, "b": 8_000}, {"a": 0.2, "b": 0.8}).mismatch  # weights honoured


def test_ratio_metric_reduces_to_a_mean_when_every_denominator_is_one() -> None:
    c, t = RNG.normal(5, 2, 3000), RNG.normal(5.1, 2, 3000)
    got = S.ratio_metric("m", c, np.ones_like(c), t, np.ones_like(t))
    ref = S.welch("m", c, t)
    assert got.control == pytest.approx(c.mean()) and got.lift == pytest.approx(ref.lift)
    assert got.p_value == pytest.approx(ref.p_value, rel=0.01)  # z vs t with 6,000 units
    assert (got.lift_low, got.lift_high) == pytest.approx((ref.lift_low, ref.lift_high), rel=1e-3)


def test_ratio_metric_interval_covers_the_truth_with_clustered_plays() -> None:
    """Skips per play, plays clustered by listener: the delta-method interval covers the true
    lift about 95% of the time (a binomial interval over plays would be too narrow)."""
    covered, n = 0, 400
    for _ in range(n):
        plays_c, plays_t = RNG.poisson(20, 300) + 1, RNG.poisson(20, 300) + 1
        skip_c = RNG.binomial(plays_c, RNG.beta(2, 5, 300))  # each listener their own skip rate
        skip_t = RNG.binomial(plays_t, np.clip(RNG.beta(2, 5, 300) * 1.1, 0, 1))
        got = S.ratio_metric("skip rate", skip_c, plays_c, skip_t, plays_t)
        true = (2 / 7 * 1.1) / (2 / 7) - 1  # ≈ 0.1 (the clip barely binds)
        covered += got.lift_low <= true <= got.lift_high
    assert covered / n == pytest.approx(0.95, abs=0.035)


def test_cuped_equals_the_regression_adjusted_estimate_and_shrinks_variance() -> None:
    import statsmodels.api as sm

    n = 2000
    pre = RNG.gamma(2, 30, 2 * n)
    arm = np.repeat([0, 1], n)
    y = 0.8 * pre + RNG.normal(0, 15, 2 * n) + 3 * arm
    got = S.cuped("minutes", y[:n], pre[:n], y[n:], pre[n:])
    theta = sm.OLS(y, sm.add_constant(pre)).fit().params[1]
    assert got.extra["theta"] == pytest.approx(theta, rel=1e-9)
    corr2 = np.corrcoef(y, pre)[0, 1] ** 2
    assert got.extra["variance_reduction"] == pytest.approx(corr2, abs=0.03)
    ancova = sm.OLS(y, sm.add_constant(np.column_stack([arm, pre - pre.mean()]))).fit()
    assert got.extra["difference"] == pytest.approx(ancova.params[1], abs=0.2)  # same estimand, ~equal
    assert got.p_value < S.welch("minutes", y[:n], y[n:]).p_value  # more power from the same data


def test_logrank_reproduces_the_lifelines_waltons_example() -> None:
    """The example of lifelines' documentation (Waltons flies): log-rank statistic 122.25, p 2.04e-28."""
    from lifelines.datasets import load_waltons

    df = load_waltons()
    ctl, trt = df[df["group"] == "control"], df[df["group"] == "miR-137"]
    got = S.survival("days", ctl["T"].to_numpy(), ctl["E"].to_numpy(), trt["T"].to_numpy(), trt["E"].to_numpy())
    assert got.comparison.extra["chi2"] == pytest.approx(122.25, abs=0.01)
    assert got.comparison.p_value == pytest.approx(2.04e-28, rel=0.01)
    from lifelines.statistics import logrank_test  # statsmodels' survdiff = lifelines' log-rank

    ref = logrank_test(trt["T"], ctl["T"], trt["E"], ctl["E"])
    assert got.comparison.extra["chi2"] == pytest.approx(ref.test_statistic, rel=1e-9)
    assert got.comparison.treatment == 26.0  # miR-137's median lifetime in the docs
    curve = got.curves["treatment"]
    assert curve["survival"][0] == 1.0 and curve["survival"][-1] == 0.0 and len(curve["lower"]) == len(curve["timeline"])


def test_power_matches_the_normal_approximation() -> None:
    # n = 2 (z_a/2 + z_b)^2 sd^2 / delta^2 for a 5% lift on a mean of 10 with sd 3: 565.1 (+1 for t)
    z = sps.norm.ppf(0.975) + sps.norm.ppf(0.8)
    approx = 2 * z**2 * 3**2 / 0.5**2
    assert S.power_means(3, 10, 0.05) == pytest.approx(approx, rel=0.01)
    assert S.power_means(3, 10, 0.05, n=566) == pytest.approx(0.8, abs=0.005)
    n = S.power_proportions(0.12, 0.10)
    assert S.power_proportions(0.12, 0.10, n=round(n)) == pytest.approx(0.8, abs=0.005)
    assert 11_000 < n < 13_000  # the textbook rule: ~12k per arm for a 10% lift on a 12% rate


def test_holm_and_benjamini_hochberg_by_hand() -> None:
    results = [S.welch("m", RNG.normal(size=10), RNG.normal(size=10)) for _ in range(4)]
    results = [S.Comparison(**{**r.__dict__, "p_value": p}) for r, p in zip(results, [0.01, 0.04, 0.03, 0.005], strict=True)]
    holm = [r.p_adjusted for r in S.adjust(results, "holm")]
    assert holm == pytest.approx([0.03, 0.06, 0.06, 0.02])  # sorted p × (4, 3, 2, 1), then running max
    bh = [r.p_adjusted for r in S.adjust(results, "fdr_bh")]
    assert bh == pytest.approx([0.02, 0.04, 0.04, 0.02])  # sorted p × 4 / rank, then running min from the top


def test_msprt_interval_contains_the_fixed_horizon_one_and_rejects_a_real_effect() -> None:
    c, t = RNG.normal(10, 3, 3000), RNG.normal(10.6, 3, 3000)
    seq, fixed = S.msprt("m", c, t), S.welch("m", c, t)
    assert seq.lift_low <= fixed.lift_low and seq.lift_high >= fixed.lift_high  # always valid = wider
    assert seq.p_value < 0.05 and seq.p_value >= fixed.p_value
    path = S.msprt_path(c, t)
    assert np.all(np.diff(path) <= 0) and path[-1] == seq.p_value  # a running minimum


@pytest.mark.parametrize("name", sorted(AA_TESTS))
def test_a_a_false_positive_rate_is_within_its_band_of_alpha(name: str) -> None:
    """1,000 A/A experiments (seeded) per test; mSPRT is peeked at after every unit."""
    alpha = AA_TESTS[name][0]
    rate = run_aa(name, sims=1000, seed=7)
    lo, hi = band(alpha, 1000)
    if name == "msprt (peeking every unit)":
        assert rate <= hi, f"{name}: {rate:.3f} > {hi:.3f}"  # always valid: at most alpha
    else:
        assert lo <= rate <= hi, f"{name}: false-positive rate {rate:.3f} outside [{lo:.3f}, {hi:.3f}]"


def test_naive_peeking_is_what_the_sequential_test_fixes() -> None:
    """The reason the sequential test exists: a t-test peeked at 20 times rejects far too often."""
    assert run_aa("welch t (peeking 20 times)", sims=400, seed=7) > 0.12
    assert run_aa("srm (3% of B lost)", sims=200, seed=7) > 0.95
