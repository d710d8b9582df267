"""`python -m experiments.analyze` on files that did not come from Encore: CSV and Parquet in,
every test the columns allow out (tables or JSON), clear errors for data it cannot analyse."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


def experiment(n: int = 4000, seed: int = 3, effect: float = 3.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    arm = rng.choice(["control", "treatment"], n)
    t = arm == "treatment"
    pre = rng.gamma(2, 30, n)
    days = rng.exponential(10 * (1 + 0.3 * t))
    plays = rng.poisson(15, n) + 1
    return pd.DataFrame({"user": [f"u{i}" for i in range(n)], "arm": arm, "minutes_before": pre,
                         "minutes": 0.8 * pre + rng.normal(0, 20, n) + effect * t,
                         "returned_d7": rng.binomial(1, 0.3, n), "plays": plays,
                         "skips": rng.binomial(plays, 0.3), "days": np.minimum(days, 14),
                         "churned": (days <= 14).astype(int)})


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-W", "ignore", "-m", "experiments.analyze", *args],
                          capture_output=True, text=True, timeout=120)


ALL = ["--unit-col", "user", "--arm-col", "arm", "--metric", "minutes", "--metric", "returned_d7",
       "--pre-col", "minutes_before", "--duration-col", "days", "--event-col", "churned", "--ratio", "skips:plays"]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_every_test_the_columns_allow_as_json(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"ab.{fmt}"
    df = experiment()
    df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path)
    out = analyze(str(path), *ALL, "--json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    tests = {(r["metric"], r["test"]) for r in got["results"]}
    assert tests == {("minutes", "welch t"), ("minutes", "CUPED welch t"), ("returned_d7", "two-proportion z"),
                     ("skips / plays", "delta-method ratio"), ("days", "log-rank")}
    assert all(r["p_adjusted"] >= r["p_value"] for r in got["results"])  # Holm over all of them
    assert got["srm"]["mismatch"] is False and sum(got["arms"].values()) == len(df)
    minutes = next(r for r in got["results"] if r["test"] == "CUPED welch t")
    assert minutes["lift_low"] > 0 and minutes["p_adjusted"] < 0.05  # the true +3 minutes is found
    assert next(r for r in got["results"] if r["metric"] == "days")["p_value"] < 0.05  # retention effect
    assert {s["metric"] for s in got["sequential"]} == {"minutes", "returned_d7"}
    assert set(got["survival"]["treatment"]["curves"]) == {"control", "treatment"}
    assert "raises minutes" in got["verdict"]


def test_tables_and_a_plain_verdict_that_says_when_it_cannot_decide(tmp_path: Path) -> None:
    path = tmp_path / "small.csv"
    experiment(n=300, effect=0.0).to_csv(path, index=False)
    out = analyze(str(path), "--unit-col", "user", "--arm-col", "arm", "--metric", "minutes")
    assert out.returncode == 0, out.stderr
    assert "Fixed-horizon tests" in out.stdout and "Always-valid" in out.stdout and "Power" in out.stdout
    assert "Cannot decide yet on minutes" in out.stdout and "more units per arm" in out.stdout


def test_a_mismatched_split_is_called_out_before_any_result(tmp_path: Path) -> None:
    df = experiment(n=20000)
    df = df[~((df["arm"] == "treatment") & (np.arange(len(df)) % 20 == 0))]  # 5% of one arm lost
    df.to_csv(tmp_path / "srm.csv", index=False)
    out = analyze(str(tmp_path / "srm.csv"), "--unit-col", "user", "--arm-col", "arm", "--metric", "minutes", "--json")
    got = json.loads(out.stdout)
    assert got["srm"]["mismatch"] and got["verdict"].startswith("Do not read the results")


@pytest.mark.parametrize(("mutate", "args", "message"), [
    (lambda d: pd.concat([d, d.head(3)]), [], "3 unit(s) appear on more than one row"),
    (lambda d: d, ["--metric", "nope"], "column(s) nope not in the data"),
    (lambda d: d.assign(arm="control"), [], "the data holds one arm"),
    (lambda d: d, ["--control", "B"], "control arm 'B' not in the data"),
])
def test_data_it_cannot_analyse_gets_a_clear_error(tmp_path: Path, capsys, mutate, args, message) -> None:  # type: ignore[no-untyped-def]
    from experiments.analyze import main  # in process: no new interpreter

    path = tmp_path / "bad.csv"
    mutate(experiment(n=200)).to_csv(path, index=False)
    code = main([str(path), "--unit-col", "user", "--arm-col", "arm", "--metric", "minutes", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err


def test_a_guardrail_that_gets_worse_is_called_out_in_the_verdict() -> None:
    from experiments.analysis import analyze_frame

    df = experiment(n=4000, effect=3.0)
    t = df["arm"] == "treatment"
    df.loc[t, "skips"] = np.minimum(df.loc[t, "plays"], df.loc[t, "skips"] + 3)  # more skips in treatment
    got = analyze_frame(df, unit="user", arm="arm", metrics=["minutes"], ratios=[("skips", "plays")],
                        guardrails=["skips / plays", "minutes"], lower_is_better=frozenset({"skips / plays"}))
    assert "GUARDRAIL BREACHED: skips / plays got worse in treatment" in got.verdict
    held = analyze_frame(experiment(n=4000), unit="user", arm="arm", metrics=["minutes"],
                         ratios=[("skips", "plays")], guardrails=["skips / plays"],
                         lower_is_better=frozenset({"skips / plays"}))
    assert "Guardrail skips / plays: no significant harm." in held.verdict
