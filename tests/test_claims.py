"""The claims' verdicts from per-seed values: planted results tables for every claim and status, the
statistics behind them, claim 9 on the real simulation, and a report of results written by 0.1.0."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from scipy import stats as scipy_stats

from orchestrator import claims, figures, report, stats
from sparsity_core.lowgrad import simulate_low_gradient
from tests.planted import per_seed, seeds, trial_row

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "results-0.1.0" / "quick"
ADAM_L2 = {"optimizer": "adam", "reg": "l2", "strength": 1e-3}


def verdict(rows: list[dict[str, Any]], number: int) -> dict[str, Any]:
    """The claim's row of `check_claims` on planted trial rows (no simulation)."""
    table = claims.check_claims(per_seed(rows))
    return table.filter(pl.col("claim") == number).row(0, named=True)


# --- statistics ------------------------------------------------------------------------------------


def test_welch_interval_is_scipys() -> None:
    left, right = stats.Sample.of([80.0, 82.0, 85.0]), stats.Sample.of([20.0, 24.0])
    got = stats.difference(left, right)
    want = scipy_stats.ttest_ind([80.0, 82.0, 85.0], [20.0, 24.0], equal_var=False).confidence_interval(0.95)
    assert got.method == "welch" and (got.low, got.high) == pytest.approx((want.low, want.high))
    assert got.effect == pytest.approx(82.333 - 22.0, abs=1e-3)
    # a scaled side: the interval of mean(left) - 2 x mean(right)
    scaled = stats.difference(left, right, 2.0)
    assert scaled.effect == pytest.approx(82.333 - 44.0, abs=1e-3) and scaled.high - scaled.low > got.high - got.low


def test_one_seed_gives_no_interval() -> None:
    one, other, three = stats.Sample.of([20.0]), stats.Sample.of([10.0]), stats.Sample.of([1.0, 2.0, 3.0])
    for left, right in ((one, other), (one, three), (three, one)):
        got = stats.difference(left, right)
        assert got.method == "none" and got.low is None and stats.above(got) == "inconclusive"
        assert stats.within(got, 100.0) == "inconclusive" and stats.direction(got) is None
    assert stats.difference(one, other).effect == 10.0 and stats.too_few(one, three) and not stats.too_few(three)
    assert stats.mean_of(one).method == "none"
    # two seeds a side that agree exactly: the value is the interval
    assert stats.difference(stats.Sample.of([5.0, 5.0]), stats.Sample.of([1.0, 1.0])).method == "exact"
    assert stats.mean_of(stats.Sample.of([0.0, 0.0])).method == "exact"


def test_statuses_against_a_threshold_and_a_margin() -> None:
    interval = stats.Interval(5.0, 1.0, 9.0, "welch")
    assert stats.above(interval) == "holds" and stats.above(interval, 9.0) == "fails"
    assert stats.above(interval, 4.0) == "inconclusive"
    assert stats.within(stats.Interval(0.1, -0.2, 0.4, "t"), 0.5) == "holds"
    assert stats.within(stats.Interval(0.6, 0.5, 0.7, "t"), 0.5) == "fails"
    assert stats.within(stats.Interval(0.3, -0.2, 0.8, "t"), 0.5) == "inconclusive"


# --- every status, from planted per-seed values ----------------------------------------------------


def test_holds_fails_inconclusive_and_mixed() -> None:
    sgd = {**ADAM_L2, "optimizer": "sgd"}
    assert verdict(seeds([(ADAM_L2, [80, 82, 84]), (sgd, [20, 22, 24])]), 1)["status"] == "holds"
    assert verdict(seeds([(ADAM_L2, [10, 11, 12]), (sgd, [30, 31, 32])]), 1)["status"] == "fails"
    within_noise = verdict(seeds([(ADAM_L2, [20, 26]), (sgd, [18, 24])]), 1)
    assert within_noise["status"] == "inconclusive"
    assert "inconclusive: optimizer=adam vs optimizer=sgd" in within_noise["evidence"]
    # one series rises with strength, the other falls: mixed, the failing one named
    mixed = verdict(seeds([({**ADAM_L2, "strength": 1e-4}, [10, 11, 12]), (ADAM_L2, [50, 51, 52]),
                           ({**sgd, "strength": 1e-4}, [30, 31, 32]), (sgd, [10, 11, 12])]), 3)
    assert mixed["status"] == "mixed"
    assert "1 of 2" in mixed["evidence"]
    assert "fails: strength=0.001 vs strength=0.0001 at optimizer=sgd" in mixed["evidence"]
    # one holds, one undecided: inconclusive, not holds
    partly = verdict(seeds([({**ADAM_L2, "strength": 1e-4}, [10, 11, 12]), (ADAM_L2, [50, 51, 52]),
                            ({**sgd, "strength": 1e-4}, [20, 26]), (sgd, [22, 28])]), 3)
    assert partly["status"] == "inconclusive"
    assert verdict(seeds([(ADAM_L2, [1.0])]), 1)["status"] == "not testable"


def test_configurations_at_the_same_strength_are_never_compared_along_it() -> None:
    """`remedy: leaky_relu` trains what `activation: leaky_relu` does: the two pair as one setting,
    and at the same strength they are not claim 3's lower and higher strength."""
    leaky = {**ADAM_L2, "activation": "leaky_relu"}
    remedy = {**leaky, "remedy": "leaky_relu"}
    row = verdict(seeds([({**leaky, "strength": 1e-4}, [10, 11, 12]), (leaky, [50, 51, 52]),
                         (remedy, [30, 31, 32])]), 3)
    names = [c["comparison"] for c in row["comparisons"]]
    assert len(names) == 2 and all("strength=0.001 vs strength=0.0001" in n for n in names)
    assert row["status"] == "holds"


def test_one_seed_on_either_side_never_decides() -> None:
    """The quick sweep's case: one seed a side. Its spread is unknown, so however large the
    difference, the comparison shows it and is inconclusive, and says why."""
    wd = {**ADAM_L2, "reg": "wd"}
    for adam, other in (([15.5], [15.9]), ([40.0], [12.0]), ([5.0], [30.0]), ([40.0], [12.0, 13.0, 14.0]),
                        ([40.0, 41.0, 42.0], [12.0])):
        row = verdict(seeds([(ADAM_L2, adam), (wd, other)]), 2)
        assert row["status"] == "inconclusive", (adam, other)
        (comparison,) = row["comparisons"]
        assert comparison["why"] == "needs 2+ seeds per side" and comparison["interval"] == "none"
        assert comparison["interval_low"] is None and comparison["effect"] is not None
        assert "inconclusive (needs 2+ seeds per side): reg=l2 strength=0.001 vs reg=wd" in row["evidence"]
    # two seeds a side decide
    assert verdict(seeds([(ADAM_L2, [40.0, 41.0]), (wd, [12.0, 13.0])]), 2)["status"] == "holds"


# Per claim: (the side the paper expects higher, the other, a shared base, values that hold). Reversed
# beyond noise: the higher side at 10-12, the other at 30-32. Within noise: 20, 26 against 18, 24.
STRONG = ([80.0, 82.0, 84.0], [20.0, 22.0, 24.0])
CASES = {
    "1 adam vs sgd": (1, ADAM_L2, {**ADAM_L2, "optimizer": "sgd"}, STRONG),
    "2 l2 vs wd": (2, {**ADAM_L2, "strength": 1e-4}, {**ADAM_L2, "reg": "wd", "strength": 2e-4}, STRONG),
    "3 strength": (3, {**ADAM_L2, "optimizer": "rmsprop"}, {**ADAM_L2, "optimizer": "rmsprop", "strength": 1e-6},
                   STRONG),
    "4 amsgrad": (4, {**ADAM_L2, "strength": 1e-4}, {**ADAM_L2, "optimizer": "amsgrad", "strength": 1e-4},
                  ([46.0, 47.0, 48.0], [12.0, 13.0, 14.0])),
    "5 leaky relu": (5, ADAM_L2, {**ADAM_L2, "activation": "leaky_relu"}, ([47.0, 47.5, 48.0], [41.0, 41.5, 42.0])),
    "6 beta init": (6, {**ADAM_L2, "beta_init": 1.0}, ADAM_L2, ([52.0, 53.0, 54.0], [45.0, 46.0, 47.0])),
    "6 gamma lr": (6, ADAM_L2, {**ADAM_L2, "gamma_lr_scale": 0.1}, ([45.0, 46.0, 47.0], [32.0, 33.0, 34.0])),
    "6 beta lr": (6, {**ADAM_L2, "beta_lr_scale": 0.1}, ADAM_L2, ([50.5, 51.0, 51.5], [45.5, 46.0, 46.5])),
    "7 batch size": (7, {**ADAM_L2, "batch_size": 40, "reference_batch_size": 40},
                     {**ADAM_L2, "batch_size": 80, "reference_batch_size": 40}, STRONG),
}


@pytest.mark.parametrize("case", CASES)
def test_each_claim_holds_reverses_and_stays_within_noise(case: str) -> None:
    number, high, low, holding = CASES[case]
    for values, expected in ((holding, "holds"), (([10.0, 11.0, 12.0], [30.0, 31.0, 32.0]), "fails"),
                             (([20.0, 26.0], [18.0, 24.0]), "inconclusive")):
        got = verdict(seeds([(high, values[0]), (low, values[1])]), number)
        assert got["status"] == expected, (case, expected, got["evidence"])
        assert len(got["comparisons"]) == 1


def test_slightly_has_an_upper_bound() -> None:
    """Leaky ReLU that halves the dead filters lowers them, but not slightly: fails."""
    leaky = {**ADAM_L2, "activation": "leaky_relu"}
    row = verdict(seeds([(ADAM_L2, [47.0, 47.5, 48.0]), (leaky, [23.0, 23.5, 24.0])]), 5)
    (comparison,) = row["comparisons"]
    assert row["status"] == "fails" and comparison["tested_low"] > 0 and comparison["bounded_high"] < 0


def test_a_difference_smaller_than_the_seed_spread_never_fails() -> None:
    """Two seeds, half a point apart against a 2-point spread: no claim fails."""
    for number, high, low, _ in CASES.values():
        got = verdict(seeds([(high, [15.0, 18.0]), (low, [14.5, 17.5])]), number)
        assert got["status"] == "inconclusive", (number, got["evidence"])
        got = verdict(seeds([(high, [14.5, 17.5]), (low, [15.0, 18.0])]), number)
        assert got["status"] == "inconclusive", (number, got["evidence"])


def test_any_strength_is_compared_and_only_like_with_like() -> None:
    amsgrad = {**ADAM_L2, "optimizer": "amsgrad"}
    row = verdict(seeds([(ADAM_L2, [60, 61, 62]), (amsgrad, [10, 11, 12])]), 4)  # at 1e-3, not the paper's 1e-4
    assert row["status"] == "holds" and "strength" not in row["comparisons"][0]["comparison"]
    apart = seeds([(ADAM_L2, [60, 61, 62]), ({**amsgrad, "strength": 1e-4}, [10, 11, 12])])
    assert verdict(apart, 4)["status"] == "not testable"  # different strengths are not paired
    # batch sizes at unequal iterations (no reference_batch_size) are not the paper's comparison
    batches = seeds([({**ADAM_L2, "batch_size": 40}, [60, 61, 62]), ({**ADAM_L2, "batch_size": 80}, [10, 11, 12])])
    assert verdict(batches, 7)["status"] == "not testable"
    # no dead filter on either side: left out and counted, the claim not testable
    row = verdict(seeds([({**ADAM_L2, "strength": 1e-6}, [0, 0]), ({**ADAM_L2, "strength": 1e-5}, [0, 0])]), 3)
    assert row["status"] == "not testable" and "no dead filters on either side" in row["note"]


def test_claim8_counts_only_configurations_with_filters_removed() -> None:
    def rows(settings: dict, errors: list[float], pruned: list[float], removed: float) -> list[dict]:
        return [trial_row(**settings, seed=s, test_err=e, pruned_test_err=p, conv_params_pruned_pct=removed,
                          dead_gamma_pct=removed) for s, (e, p) in enumerate(zip(errors, pruned))]

    sgd = {**ADAM_L2, "optimizer": "sgd"}
    unchanged = rows(ADAM_L2, [10, 11, 12], [10.1, 11.0, 12.2], 90.0) + rows(sgd, [20, 21], [25, 30], 0.0)
    row = verdict(unchanged, 8)
    assert row["status"] == "holds" and row["note"] == "1 of 2 configurations had dead filters removed"
    assert [c["comparison"] for c in row["comparisons"]] == ["optimizer=adam: 90.0% of conv params removed"]
    assert verdict(rows(ADAM_L2, [10, 11, 12], [13.0, 14.2, 15.1], 90.0), 8)["status"] == "fails"
    assert verdict(rows(ADAM_L2, [10, 11], [10.0, 10.9], 90.0), 8)["status"] == "inconclusive"
    assert verdict(rows(ADAM_L2, [10], [10.0], 90.0), 8)["status"] == "inconclusive"  # one seed: no interval
    nothing = verdict(rows(ADAM_L2, [10, 11], [10, 11], 0.0), 8)
    assert nothing["status"] == "not testable" and nothing["note"] == "0 of 1 configurations had dead filters removed"


def _pruned(settings: dict, flops: list[float], errors: list[float]) -> list[dict]:
    """Trial rows of one configuration: per seed, its % FLOPs removed and pruned test error."""
    return [trial_row(**settings, seed=s, flops_pruned_pct=f, pruned_test_err=e, dead_gamma_pct=10.0)
            for s, (f, e) in enumerate(zip(flops, errors))]


SLIM = {"optimizer": "sgd", "reg": "l1_gamma", "strength": 1e-4, "method": "slimming"}
L1 = {"optimizer": "sgd", "reg": "l2", "strength": 5e-4, "method": "l1norm"}


def test_claim10_compares_at_matched_test_error() -> None:
    implicit = _pruned(ADAM_L2, [60, 62, 64], [2.0, 2.1, 2.2])
    explicit = (_pruned({**L1, "fraction": 0.3}, [20, 21, 22], [2.1, 2.3, 2.2])  # matched: err 2.2 - 2.1 < 0.5 over the seeds
                + _pruned({**L1, "fraction": 0.6}, [45, 46, 47], [4.0, 4.2, 4.1])  # too inaccurate to match
                + _pruned({**SLIM, "fraction": 0.5, "finetune_epochs": 5}, [55, 57, 59], [2.2, 2.3, 2.4]))
    row = verdict(implicit + explicit, 10)
    assert row["status"] == "holds", row["evidence"]
    by_method = {c["comparison"].split(" vs ")[1].split()[0]: c for c in row["comparisons"]}
    l1, slim = by_method["l1norm"], by_method["slimming"]
    assert "fraction=0.3" in l1["comparison"] and l1["right_mean"] == 21.0 and l1["effect"] == 41.0
    assert l1["test"] == "implicit - 2 x l1norm > 0" and l1["tested"] == pytest.approx(62 - 42)
    assert slim["test"] == "implicit - slimming > -10" and slim["effect"] == pytest.approx(5.0)
    assert slim["interval"] == "welch" and slim["status"] == "holds"
    # An implicit point that removes little fails against L1-norm at the same error
    little = _pruned(ADAM_L2, [10, 11, 12], [2.0, 2.1, 2.2])
    assert verdict(little + explicit, 10)["status"] == "fails"


def test_claim10_compares_every_explicit_point_within_the_error_budget() -> None:
    """The explicit points are chosen by their error alone: each one within the budget is a counted
    comparison, whatever FLOPs it removes; the verdict aggregates them by the rule."""
    implicit = _pruned(ADAM_L2, [60, 62, 64], [2.0, 2.1, 2.2])
    milder = _pruned({**L1, "fraction": 0.2}, [10, 11, 12], [2.1, 2.2, 2.3])
    matched = _pruned({**L1, "fraction": 0.3}, [20, 21, 22], [2.1, 2.3, 2.2])
    row = verdict(implicit + milder + matched, 10)
    assert row["status"] == "holds" and len(row["comparisons"]) == 2
    assert {c["right_mean"] for c in row["comparisons"]} == {11.0, 21.0}
    # a third within the budget that removes more than half of what implicit does: mixed, and named
    strong = _pruned({**L1, "fraction": 0.4}, [34, 35, 36], [2.2, 2.3, 2.4])
    row = verdict(implicit + milder + matched + strong, 10)
    assert row["status"] == "mixed" and "2 of 3" in row["evidence"] and "fraction=0.4" in row["evidence"]


def test_claim10_matches_the_training_schedule() -> None:
    """Methods may differ in what they prescribe (optimizer, LR, regularizer, strength, pruning), in
    nothing else: an explicit configuration trained for other epochs, batch size or LR steps is
    not compared."""
    implicit = _pruned(ADAM_L2, [60, 62, 64], [2.0, 2.1, 2.2])
    for change in ({"epochs": 100}, {"batch_size": 80}, {"lr_steps": [100]}, {"augment": False}):
        other = _pruned({**L1, "fraction": 0.3, **change}, [20, 21, 22], [2.1, 2.3, 2.2])
        row = verdict(implicit + other, 10)
        assert row["status"] == "not testable" and "training schedule" in row["evidence"], change
    # the LR the method trains with is its own, and what a trial records is not training: still compared
    for change in ({"lr": 0.05}, {"snapshot_every": 5, "act_every": 5}):
        same = _pruned({**L1, "fraction": 0.3, **change}, [20, 21, 22], [2.1, 2.3, 2.2])
        assert verdict(implicit + same, 10)["status"] == "holds", change
    prescribed = {"optimizer", "lr", "reg", "strength", "method", "fraction", "finetune_epochs"}
    assert prescribed <= set(claims.METHOD_SETTINGS)


def test_claim10_leaves_a_point_whose_error_may_be_either_side_of_the_match_undecided() -> None:
    """Whether an explicit point is within MATCHED_ERR of the implicit error is decided over the
    seeds: one whose interval straddles it is compared but not decided, so a shift of the errors
    by seed noise cannot move a point in or out of the verdict."""
    implicit = _pruned(ADAM_L2, [60, 62, 64], [2.0, 2.1, 2.2])
    straddling = _pruned({**L1, "fraction": 0.4}, [34, 35, 36], [2.4, 2.5, 2.6])
    row = verdict(implicit + straddling, 10)
    assert row["status"] == "inconclusive" and len(row["comparisons"]) == 1
    assert row["comparisons"][0]["why"] == "test errors not shown within the match"


def test_claim10_needs_a_match_on_the_same_network() -> None:
    implicit = _pruned(ADAM_L2, [60, 62, 64], [2.0, 2.1, 2.2])
    worse = _pruned({**L1, "fraction": 0.6}, [45, 46, 47], [4.0, 4.2, 4.1])
    row = verdict(implicit + worse, 10)
    assert row["status"] == "not testable" and "within 0.5 points" in row["evidence"]
    assert "l1norm at" in row["note"]
    other_net = _pruned({**L1, "fraction": 0.3, "model": "vgg11"}, [20, 21, 22], [2.1, 2.3, 2.2])
    assert "same network" in verdict(implicit + other_net, 10)["evidence"]
    one_seed = verdict(_pruned(ADAM_L2, [60], [2.0]) + _pruned({**L1, "fraction": 0.3}, [20], [2.3]), 10)
    assert one_seed["status"] == "inconclusive" and "needs 2+ seeds per side" in one_seed["evidence"]
    assert verdict(seeds([(ADAM_L2, [50.0])]), 10)["status"] == "not testable"


def test_explicit_pipelines_stay_out_of_claims_1_to_8() -> None:
    """A pipeline's last epoch measures its pruned, fine-tuned network: not a trained network's sparsity."""
    sgd = {**ADAM_L2, "optimizer": "sgd"}
    rows = seeds([(ADAM_L2, [80, 82, 84]), (sgd, [20, 22, 24]),
                  ({**ADAM_L2, "method": "l1norm", "fraction": 0.5}, [1, 2, 3]),
                  ({**sgd, "method": "l1norm", "fraction": 0.5}, [90, 91, 92])])
    row = verdict(rows, 1)
    assert row["status"] == "holds" and len(row["comparisons"]) == 1


def test_a_remedy_that_only_sets_settings_pairs_as_those_settings() -> None:
    """Rows record the settings trained: `remedy: leaky_relu` has activation leaky_relu, and is claim 5's
    comparison against ReLU; `remedy: gamma_lr_scale` (gamma_lr_scale 0.1) is claim 6's."""
    leaky = {**ADAM_L2, "remedy": "leaky_relu", "activation": "leaky_relu"}
    row = verdict(seeds([(ADAM_L2, [47.0, 47.5, 48.0]), (leaky, [41.0, 41.5, 42.0])]), 5)
    assert row["status"] == "holds" and len(row["comparisons"]) == 1
    scaled = {**ADAM_L2, "remedy": "gamma_lr_scale", "gamma_lr_scale": 0.1}
    row = verdict(seeds([(ADAM_L2, [45.0, 46.0, 47.0]), (scaled, [32.0, 33.0, 34.0])]), 6)
    assert row["status"] == "holds" and len(row["comparisons"]) == 1
    # a remedy that acts on the model is not its settings: revive is compared with nothing here
    revive = {**ADAM_L2, "remedy": "revive", "activation": "leaky_relu"}
    assert verdict(seeds([(ADAM_L2, [47.0, 47.5, 48.0]), (revive, [41.0, 41.5, 42.0])]), 5)["status"] == "not testable"


# --- claim 9: the low-gradient simulation ----------------------------------------------------------


def claim9(lowgrad: pl.DataFrame) -> dict[str, Any]:
    table = claims.check_claims(per_seed(seeds([(ADAM_L2, [1.0])])), lowgrad)
    return table.filter(pl.col("claim") == 9).row(0, named=True)


@pytest.fixture(scope="module")
def simulation() -> pl.DataFrame:
    return figures.lowgrad_frame(simulate_low_gradient())  # the report's default: 10,000 iterations


def test_claim9_holds_on_the_real_simulation(simulation: pl.DataFrame) -> None:
    row = claim9(simulation)
    assert row["status"] == "holds", row["evidence"]
    by_name = {c["comparison"]: c for c in row["comparisons"]}
    counted = {name for name, c in by_name.items() if c["counted"]}
    assert counted == {f"{o} vs sgd at L2 {s}" for o in ("adam", "rmsprop", "adamax") for s in ("0.0001", "1e-05")} \
        | {f"amsgrad vs adam at L2 {s}: dampened" for s in ("0.001", "0.0001", "1e-05")}
    # the supplement says nothing quantitative on Adagrad / Adadelta, nor claims 1e-3: shown, not counted
    assert not by_name["adagrad vs sgd at L2 0.0001"]["counted"] and not by_name["adam vs sgd at L2 0.001"]["counted"]
    adam = by_name["adam vs sgd at L2 0.0001"]
    assert adam["left_n"] == 10 and 1550 < adam["left_mean"] < 1700 and adam["left_std"] > 0  # the seeds differ
    assert adam["right_mean"] is None and adam["effect"] == pytest.approx(10_000 / adam["left_mean"], rel=0.02)
    # decided on its interval over the seeds: SGD still holds most of the scalar when Adam has it at ~0
    assert adam["interval"] == "t" and adam["tested_low"] > claims.SGD_KEEPS
    assert by_name["adam vs sgd at L2 0.001"]["right_mean"] == pytest.approx(2980, abs=20)
    # at 1e-5 the noise is as large as the L2 term: every seed reaches ~0, at widely different times
    slow = by_name["adamax vs sgd at L2 1e-05"]
    assert slow["left_n"] == 10 and slow["left_std"] > 300 and slow["status"] == "holds"
    assert "10 noise seeds" in row["note"]


def test_claim9_is_never_failed_by_a_short_simulation() -> None:
    short = figures.lowgrad_frame(simulate_low_gradient(iterations=300, record_every=10, noise_seeds=3))
    row = claim9(short)
    assert row["status"] == "inconclusive"
    assert "neither reaches ~0 within 300 iterations in 3 of 3 seeds" in row["evidence"]


def test_claim9_with_one_noise_seed_decides_nothing() -> None:
    one = figures.lowgrad_frame(simulate_low_gradient(iterations=2000, noise_seeds=1))
    row = claim9(one)
    adam = next(c for c in row["comparisons"] if c["comparison"] == "adam vs sgd at L2 0.0001")
    assert adam["status"] == "inconclusive" and adam["why"] == "needs 2+ seeds per side"
    assert row["status"] == "inconclusive"


def _planted_simulation(reach: dict[str, list[int | None]], horizon: int = 100) -> pl.DataFrame:
    """A simulation at L2 1e-4: each optimizer's scalar is 1 until its seed's iteration in `reach`
    (never with None), then 0; SGD's falls linearly from 1 to 0 at the horizon, so it keeps
    1 - t / horizon when another reaches ~0 at t."""
    rows = [{"optimizer": optimizer, "strength": 1e-4, "seed": seed, "iteration": i,
             "value": 1.0 if t is None or i < t else 0.0}
            for optimizer, times in reach.items() for seed, t in enumerate(times) for i in range(horizon + 1)]
    seeds = len(next(iter(reach.values())))
    rows += [{"optimizer": "sgd", "strength": 1e-4, "seed": seed, "iteration": i, "value": 1 - i / horizon}
             for seed in range(seeds) for i in range(horizon + 1)]
    return pl.DataFrame(rows, schema=figures.LOWGRAD_SCHEMA)


@pytest.mark.parametrize("adam, amsgrad, expected", [
    ([10, 12, 14], [None, None, None], ("holds", "holds")),  # SGD keeps ~0.9; AMSGrad never gets there
    ([80, 85, 90], [20, 30, 25], ("fails", "fails")),  # SGD keeps ~0.15; AMSGrad ~60 iterations sooner
    ([40, 55, 60], [50, 50, 70], ("inconclusive", "inconclusive")),  # SGD keeps 0.6, 0.45, 0.4; +10, -5, +10
])
def test_claim9_is_decided_over_the_noise_seeds(adam, amsgrad, expected) -> None:
    row = claim9(_planted_simulation({"adam": adam, "amsgrad": amsgrad}))
    by_name = {c["comparison"]: c for c in row["comparisons"]}
    got = (by_name["adam vs sgd at L2 0.0001"]["status"], by_name["amsgrad vs adam at L2 0.0001: dampened"]["status"])
    assert got == expected, [(c["comparison"], c["tested_text"]) for c in row["comparisons"]]


def test_lowgrad_decay_is_the_first_time_at_zero() -> None:
    """At ~0 the noise moves the scalar back over the threshold now and then: the first time counts."""
    df = pl.DataFrame({"optimizer": ["x"] * 5, "strength": [1e-4] * 5, "seed": [0] * 5, "iteration": [0, 1, 2, 3, 4],
                       "value": [1.0, 0.01, 0.2, 0.01, 0.0]})
    assert claims.lowgrad_decay(df)["iters_to_zero"].to_list() == [1]


# --- claims.csv and a report of 0.1.0 results ------------------------------------------------------


def test_claims_table_has_a_row_per_claim_and_per_comparison() -> None:
    sgd = {**ADAM_L2, "optimizer": "sgd"}
    table = claims.claims_table(claims.check_claims(per_seed(seeds([(ADAM_L2, [80, 82]), (sgd, [20, 22])]))))
    assert table.filter(pl.col("comparison").is_null())["claim"].to_list() == list(range(1, 11))
    row = table.filter(pl.col("claim") == 1, pl.col("comparison").is_not_null()).row(0, named=True)
    assert (row["left_mean"], row["left_n"], row["right_mean"], row["right_n"]) == (81.0, 2, 21.0, 2)
    assert row["effect"] == 60.0 and row["interval"] == "welch" and row["interval_low"] < 60 < row["interval_high"]
    assert row["test"] == "adam - 2 x sgd > 0" and row["tested"] == 39.0 and row["status"] == "holds" and row["counted"]


def test_report_of_0_1_0_results(tmp_path: Path) -> None:
    """The shipped quick sweep as the 0.1.0 store wrote it: one seed, digits. The report reads it,
    decides nothing seed noise could flip, and sets no CIFAR number beside it."""
    sweep = tmp_path / "quick"
    shutil.copytree(FIXTURE, sweep)
    out = report.build_report(sweep, tmp_path / "report")
    text = (out / "claims.md").read_text()
    status = {int(line[3:].split(".")[0]): line.split(": ", 1)[0].split(". ", 1)[1]
              for line in text.splitlines() if line.startswith("## ")}
    assert status == {1: "inconclusive", 2: "inconclusive", 3: "not testable", 4: "not testable",
                      5: "not testable", 6: "not testable", 7: "not testable", 8: "inconclusive", 9: "holds",
                      10: "not testable"}
    assert "95% confidence interval" in text and "prior" not in text
    # one seed a configuration: every comparison of claims 1-8 shows its effect and decides nothing
    assert "| inconclusive (needs 2+ seeds per side) |" in text and "| holds |" not in text.split("## 9.")[0]
    csv = pl.read_csv(out / "claims.csv")
    assert dict(csv.filter(pl.col("comparison").is_null()).select("claim", "status").rows()) == status
    assert csv.filter(pl.col("claim") == 8, pl.col("comparison").is_not_null()).height == 4
    table = (out / "table.md").read_text()
    paper_part = table.split("## Beside the paper", 1)[1].split("## Implicit", 1)[0]
    assert "were not trained in the supplement's setup: dataset=digits" in paper_part
    assert "ours / paper" not in paper_part
    assert "| optimizer=adam reg=l2 vs optimizer=sgd reg=l2 | dead filters (gamma) | +14.2 (n=1 vs 1) " \
           "| +56.0 (supp. Table 1 cifar10) | undecided (needs 2+ seeds per side) |" in paper_part
    assert not any(c.startswith(("paper_", "diff_")) for c in pl.read_csv(out / "table.csv").columns)
