"""The report's data step on hand-made frames: aggregation over seeds, the paper beside it, the claims."""

from __future__ import annotations

import math
from typing import Any

import polars as pl
import pytest

from orchestrator import claims, figures, paper, plots, results
from orchestrator.store import TABLES
from sparsity_core.config import TrialConfig, alias_paths
from sparsity_core.lowgrad import simulate_low_gradient

LAYERS = {"C1": 64, "C2": 128, "C3": 128, "C4": 256, "C5": 256, "C6": 512, "C7": 512}


def trial_row(status: str = "ok", **settings: Any) -> dict[str, Any]:
    """A trials-table row of a real TrialConfig (its settings under their aliases)."""
    metrics = {k: settings.pop(k) for k in list(settings) if k in results.METRICS}
    seed = settings.pop("seed", 0)
    sections: dict[str, dict[str, Any]] = {"dataset": {}, "model": {}, "train": {}}
    for alias, value in settings.items():
        section, leaf = alias_paths()[alias].split(".")
        sections[section][leaf] = value
    cfg = TrialConfig.model_validate({**sections, "seed": seed})
    return {"trial_id": cfg.trial_id, "sweep": "t", "status": status, **cfg.flat(), "epochs_run": 2,
            **{m: None for m in results.METRICS}, **metrics, "code_version": "v1",
            "config_json": cfg.model_dump_json()}


def frame(rows: list[dict[str, Any]], table: str) -> pl.DataFrame:
    return pl.from_arrow(TABLES[table].empty_table()).vstack(
        pl.DataFrame(rows, schema=pl.from_arrow(TABLES[table].empty_table()).schema))


def layer_rows(trial_id: str, dead_by_epoch: dict[int, dict[str, int]]) -> list[dict[str, Any]]:
    return [{"trial_id": trial_id, "epoch": e, "layer": layer, "n_filters": LAYERS[layer], "dead_gamma": n,
             "dead_act": n, "revived": None}
            for e, dead in dead_by_epoch.items() for layer, n in dead.items()]


@pytest.fixture
def two_configs() -> tuple[pl.DataFrame, pl.DataFrame]:
    """adam and sgd with L2 1e-3, two seeds each, plus a failed adam trial that must not count."""
    rows, layers = [], []
    for optimizer, seed, err, dead_c7 in (("adam", 0, 10.0, 512), ("adam", 1, 12.0, 256),
                                          ("sgd", 0, 20.0, 0), ("sgd", 1, 22.0, 0)):
        row = trial_row(optimizer=optimizer, reg="l2", strength=1e-3, seed=seed, test_err=err,
                        train_loss=0.1, test_loss=0.4, dead_gamma_pct=50.0 if optimizer == "adam" else 10.0)
        rows.append(row)
        # epoch 1 must be ignored: only the final epoch's counts enter the table
        layers += layer_rows(row["trial_id"], {1: {name: 0 for name in LAYERS},
                                               2: {**{name: 0 for name in LAYERS}, "C1": 32, "C7": dead_c7}})
    rows.append(trial_row("failed", optimizer="adam", reg="l2", strength=1e-3, seed=2, test_err=99.0))
    return frame(rows, "trials"), frame(layers, "layers")


def test_aggregate_means_std_and_layers(two_configs) -> None:
    trials, layers = two_configs
    agg = results.aggregate(trials, layers)
    assert agg.height == 2
    assert agg["config"].to_list() == ["optimizer=adam", "optimizer=sgd"]
    adam = agg.row(0, named=True)
    assert adam["n_seeds"] == 2  # the failed seed 2 is left out
    assert adam["test_err_mean"] == pytest.approx(11.0)
    assert adam["test_err_std"] == pytest.approx(math.sqrt(2.0))
    assert adam["C7_mean"] == pytest.approx(75.0)  # (100% + 50%) / 2, final epoch only
    assert adam["C1_mean"] == pytest.approx(50.0)
    assert [c for c in agg.columns if c.endswith("_mean")][:10] == [
        "train_loss_mean", "test_loss_mean", "test_err_mean", *(f"{c}_mean" for c in LAYERS)]
    assert adam["trial_ids"].count(";") == 1 and adam["code_versions"] == "v1"


def test_one_seed_has_null_std_and_layer_order_is_numeric() -> None:
    row = trial_row(optimizer="adam", reg="l2", strength=1e-3, test_err=5.0, model="vgg16")
    layers = [{"trial_id": row["trial_id"], "epoch": 1, "layer": f"C{i}", "n_filters": 10, "dead_gamma": i,
               "dead_act": None, "revived": None} for i in range(1, 14)]
    agg = results.aggregate(frame([row], "trials"), frame(layers, "layers"))
    assert agg["test_err_std"].to_list() == [None]
    means = [c for c in agg.columns if c.startswith("C") and c.endswith("_mean")]
    assert means == [f"C{i}_mean" for i in range(1, 14)]
    assert agg["C13_mean"].to_list() == [130.0]
    assert agg["config"].to_list() == ["optimizer=adam reg=l2 strength=0.001"]  # nothing varies


def test_configurations_are_grouped_by_every_setting_but_seed() -> None:
    rows = [trial_row(optimizer="adam", reg="l2", strength=s, seed=seed, batch_size=b, test_err=1.0)
            for s in (1e-3, 1e-4) for b in (40, 80) for seed in (0, 1, 2)]
    agg = results.aggregate(frame(rows, "trials"), frame([], "layers"))
    assert agg.height == 4 and set(agg["n_seeds"]) == {3}
    assert results.varying_settings(agg) == ["strength", "batch_size"]
    assert agg["config"][0] == "strength=0.0001 batch_size=40"


def test_reference_tables_load_with_defaults() -> None:
    ref = paper.load_reference()
    assert ref.height == 8 + 8 + 5 + 18
    t3 = ref.filter(pl.col("source").str.starts_with("supp. Table 3"))
    assert set(t3["optimizer"]) == {"adam"} and set(t3["strength"]) == {1e-4} and set(t3["dataset"]) == {"cifar100"}
    assert set(ref.filter(pl.col("source") == "supp. Table 1")["activation"]) == {"relu"}


def test_compare_with_paper_matches_and_diffs(two_configs) -> None:
    trials, layers = two_configs
    agg = paper.compare_with_paper(results.aggregate(trials, layers), paper.load_reference())
    adam = agg.row(0, named=True)
    # digits/synthetic is no paper dataset: the CIFAR-10 table stands beside it
    assert adam["paper_source"] == "supp. Table 1 cifar10"
    assert adam["paper_test_err"] == 13.1 and adam["diff_test_err"] == pytest.approx(11.0 - 13.1)
    assert adam["paper_C7"] == 98.0 and adam["diff_C7"] == pytest.approx(75.0 - 98.0)
    assert agg.row(1, named=True)["paper_dead_gamma_pct"] == 27.0


def test_compare_with_paper_respects_dataset_and_extra_keys() -> None:
    ref = paper.load_reference()
    base = dict(optimizer="adam", reg="l2", strength=1e-4, dataset="cifar100", root="/data", test_err=30.0)
    rows = [
        trial_row(**base),
        trial_row(**base, activation="leaky_relu", negative_slope=0.1),
        trial_row(**base, beta_init=1.0),
        trial_row(**{**base, "optimizer": "adadelta"}),
    ]
    agg = paper.compare_with_paper(results.aggregate(frame(rows, "trials"), frame([], "layers")), ref)
    by_config = {r["config"]: r for r in agg.to_dicts()}
    sources = {k: v["paper_source"] for k, v in by_config.items()}
    assert sources == {
        "optimizer=adam activation=leaky_relu negative_slope=0.1 beta_init=0": "supp. Table 2 cifar100",
        "optimizer=adam activation=relu negative_slope=0.01 beta_init=0": "supp. Table 2 cifar100",
        "optimizer=adam activation=relu negative_slope=0.01 beta_init=1": "supp. Table 3 (beta_init_1.0) cifar100",
        "optimizer=adadelta activation=relu negative_slope=0.01 beta_init=0": None,
    }
    leaky = by_config["optimizer=adam activation=leaky_relu negative_slope=0.1 beta_init=0"]
    assert leaky["paper_test_err"] == 37.2


def test_no_match_leaves_the_table_alone() -> None:
    rows = [trial_row(optimizer="adadelta", reg="l2", strength=1e-3, test_err=1.0)]
    agg = results.aggregate(frame(rows, "trials"), frame([], "layers"))
    assert paper.compare_with_paper(agg, paper.load_reference()).columns == agg.columns


# --- claims ----------------------------------------------------------------------------------------


def configs(specs: list[tuple[dict[str, Any], float]]) -> pl.DataFrame:
    """An aggregated frame from (settings, % dead by gamma) pairs."""
    rows = [trial_row(**settings, dead_gamma_pct=dead, test_err=10.0) for settings, dead in specs]
    return results.aggregate(frame(rows, "trials"), frame([], "layers"))


def claim(number: int, agg: pl.DataFrame) -> tuple[str, str]:
    return next(c.check for c in claims.CLAIMS if c.number == number)(agg)


def test_claim1_adaptive_vs_sgd() -> None:
    holds = configs([({"optimizer": "adam", "reg": "l2", "strength": 1e-3}, 80.0),
                     ({"optimizer": "sgd", "reg": "l2", "strength": 1e-3}, 27.0),
                     ({"optimizer": "rmsprop", "reg": "l2", "strength": 1e-3}, 70.0)])
    status, evidence = claim(1, holds)
    assert status == "holds" and "2 of 2" in evidence and "80.0%" in evidence
    fails = configs([({"optimizer": "adam", "reg": "l2", "strength": 1e-3}, 10.0),
                     ({"optimizer": "sgd", "reg": "l2", "strength": 1e-3}, 27.0)])
    assert claim(1, fails)[0] == "fails"
    tie = configs([({"optimizer": "adam", "reg": "l2", "strength": 1e-3}, 0.0),
                   ({"optimizer": "sgd", "reg": "l2", "strength": 1e-3}, 0.0)])
    assert claim(1, tie)[0] == "not testable"
    # different strengths are not "the same strength"
    apart = configs([({"optimizer": "adam", "reg": "l2", "strength": 1e-3}, 80.0),
                     ({"optimizer": "sgd", "reg": "l2", "strength": 1e-4}, 27.0)])
    assert claim(1, apart)[0] == "not testable"


def test_claim2_l2_vs_wd_at_similar_strength() -> None:
    agg = configs([({"optimizer": "adam", "reg": "l2", "strength": 1e-4}, 70.0),
                   ({"optimizer": "adam", "reg": "wd", "strength": 2e-4}, 60.0),
                   ({"optimizer": "adam", "reg": "wd", "strength": 1e-2}, 99.0)])  # not similar: ignored
    status, evidence = claim(2, agg)
    assert status == "holds" and "1 of 1" in evidence
    assert claim(2, configs([({"optimizer": "sgd", "reg": "l2", "strength": 1e-4}, 1.0),
                             ({"optimizer": "sgd", "reg": "wd", "strength": 1e-4}, 1.0)]))[0] == "not testable"


def test_claim3_strength_trend() -> None:
    rising = configs([({"optimizer": o, "reg": "l2", "strength": s}, d)
                      for o, series in (("adam", (0.0, 47.0, 95.0)), ("sgd", (0.0, 0.0, 9.0)))
                      for s, d in zip((1e-6, 1e-4, 1e-2), series)])
    status, evidence = claim(3, rising)
    assert status == "holds" and "2 of 2" in evidence
    falling = configs([({"optimizer": "adam", "reg": "l2", "strength": 1e-4}, 50.0),
                       ({"optimizer": "adam", "reg": "l2", "strength": 1e-3}, 40.0)])
    assert claim(3, falling)[0] == "fails"
    flat = configs([({"optimizer": "adam", "reg": "l2", "strength": 1e-4}, 50.0),
                    ({"optimizer": "adam", "reg": "l2", "strength": 1e-3}, 50.0)])
    assert claim(3, flat)[0] == "fails"  # no more sparsity at all
    # nothing died anywhere (e.g. too few epochs): the data cannot show a direction
    none_dead = configs([({"optimizer": "adam", "reg": "l2", "strength": 1e-6}, 0.0),
                         ({"optimizer": "adam", "reg": "l2", "strength": 1e-5}, 0.0)])
    status, evidence = claim(3, none_dead)
    assert status == "not testable" and "no dead filters" in evidence


def test_claim7_batch_size_and_untestable() -> None:
    agg = configs([({"optimizer": "adam", "reg": "l2", "strength": 1e-4, "batch_size": b}, d)
                   for b, d in ((40, 50.0), (80, 40.0), (160, 30.0))])
    assert claim(7, agg)[0] == "holds"
    assert claim(7, configs([({"optimizer": "adam"}, 1.0)]))[0] == "not testable"


def test_claims_4_5_6_8() -> None:
    agg = configs([({"optimizer": "adam", "reg": "l2", "strength": 1e-4}, 47.0),
                   ({"optimizer": "amsgrad", "reg": "l2", "strength": 1e-4}, 13.0),
                   ({"optimizer": "adam", "reg": "l2", "strength": 1e-4, "activation": "leaky_relu"}, 41.0),
                   ({"optimizer": "adam", "reg": "l2", "strength": 1e-4, "beta_init": 1.0}, 53.0),
                   ({"optimizer": "adam", "reg": "l2", "strength": 1e-4, "gamma_lr_scale": 0.1}, 33.0),
                   ({"optimizer": "adam", "reg": "l2", "strength": 1e-4, "beta_lr_scale": 0.1}, 51.0)])
    assert claim(4, agg)[0] == "holds"
    assert claim(5, agg)[0] == "holds"
    status, evidence = claim(6, agg)
    assert status == "holds" and "beta_init" in evidence and "gamma_lr_scale" in evidence
    assert claim(8, agg)[0] == "not testable"
    pruned = trial_row(optimizer="adam", test_err=13.1, pruned_test_err=13.5, conv_params_pruned_pct=97.0)
    status, evidence = claim(8, results.aggregate(frame([pruned], "trials"), frame([], "layers")))
    assert status == "holds" and "97%" in evidence


def test_check_claims_lists_every_claim() -> None:
    table = claims.check_claims(configs([({"optimizer": "adam"}, 1.0)]))
    assert table["claim"].to_list() == list(range(1, 10))
    assert set(table["status"]) == {"not testable"}


def test_low_gradient_claim9_direction() -> None:
    """Adam, RMSProp and Adamax drive the scalar to ~0 far faster than SGD (supplement Fig. 3): at
    L2 1e-4 they settle within 4000 steps while SGD's scalar is still far from 0; at 1e-3, where SGD
    decays too, they are still sooner."""
    sim = figures.lowgrad_frame(simulate_low_gradient(
        strengths=(1e-3, 1e-4), optimizers=("sgd", "adam", "rmsprop", "adamax"), iterations=4000, record_every=20))
    decay = {(r["optimizer"], r["strength"]): r["iters_to_zero"] for r in claims.lowgrad_decay(sim).to_dicts()}
    assert decay[("sgd", 1e-4)] is None  # SGD's scalar is still far from 0 after 4000 steps
    for optimizer in ("adam", "rmsprop", "adamax"):
        assert decay[(optimizer, 1e-4)] is not None and decay[(optimizer, 1e-4)] < 4000
        assert decay[(optimizer, 1e-3)] < decay[("sgd", 1e-3)]
    status, evidence = claims.claim9_low_gradient(sim)
    assert status in ("holds", "fails") and "adam L2 0.0001" in evidence


def test_lowgrad_decay_settles_only_when_it_stays() -> None:
    df = pl.DataFrame({"optimizer": ["x"] * 5, "strength": [1e-4] * 5, "iteration": [0, 1, 2, 3, 4],
                       "value": [1.0, 0.01, 0.2, 0.01, 0.0]})
    assert claims.lowgrad_decay(df)["iters_to_zero"].to_list() == [3]


# --- figure data -----------------------------------------------------------------------------------


def test_pareto_points_and_layer_profile(two_configs) -> None:
    agg = results.aggregate(*two_configs)
    points = results.pareto_points(agg)
    assert points["on_front"].to_list() == [True, False]  # adam: more dead filters and less error
    profile = figures.layer_profile(agg)
    assert profile.height == 2 * 7
    assert profile.filter((pl.col("config") == "optimizer=adam") & (pl.col("layer") == "C7"))["mean"].item() == 75.0


def test_gamma_beta_quantiles_and_universality(two_configs) -> None:
    trials, _ = two_configs
    ids = trials.filter(pl.col("status") == "ok")["trial_id"].to_list()
    rows = [{"trial_id": tid, "epoch": e, "layer": layer, "filter": f, "gamma": g, "beta": -g,
             "max_act": 1.0, "universality": None if e == 1 else f / 4}
            for tid in ids for e in (1, 2) for layer in ("C1", "C4", "C7")
            for f, g in enumerate((0.0, 0.5, 1.0, 1.5, 2.0))]
    filters = frame(rows, "filters")
    q = figures.gamma_beta_quantiles(filters, trials)
    assert set(q["layer"]) == {"C1", "C7"}  # first and last by default
    one = q.filter((pl.col("config") == "optimizer=adam") & (pl.col("layer") == "C1")
                   & (pl.col("param") == "gamma") & (pl.col("epoch") == 2))
    # two seeds pooled: 0, 0, .5, .5, 1, 1, 1.5, 1.5, 2, 2
    assert one["q50"].item() == 1.0 and one["q25"].item() == pytest.approx(0.5) and one["q95"].item() == 2.0
    assert set(figures.gamma_beta_quantiles(filters, trials, ["C4"])["layer"]) == {"C4"}
    hist = figures.universality_histogram(filters, trials, bins=4)
    one = hist.filter((pl.col("config") == "optimizer=sgd") & (pl.col("layer") == "C7"))
    # universality 0, .25, .5, .75, 1.0 over 2 seeds -> bins [0,.25) x2, [.25,.5) x2, [.5,.75) x2, [.75,1] x4
    assert one["count"].to_list() == [2, 2, 2, 4]
    assert one["fraction"].sum() == pytest.approx(1.0)
def _flags(df: pl.DataFrame, objectives: dict) -> list[bool]:
    return results.pareto_front(df, objectives).to_list()


def test_pareto_max_min_mix() -> None:
    # sparsity up, error down: (50, 10) beats (40, 12); (80, 20) and (10, 5) trade off.
    df = pl.DataFrame({"dead": [50.0, 40.0, 80.0, 10.0, 30.0], "err": [10.0, 12.0, 20.0, 5.0, 25.0]})
    assert _flags(df, {"dead": "max", "err": "min"}) == [True, False, True, True, False]


def test_pareto_both_min_and_mapping_form() -> None:
    df = pl.DataFrame({"a": [1.0, 2.0, 3.0, 2.0], "b": [3.0, 2.0, 1.0, 3.0]})
    assert _flags(df, {"a": "min", "b": "min"}) == [True, True, True, False]


def test_pareto_duplicates_all_on_front() -> None:
    df = pl.DataFrame({"dead": [60.0, 60.0, 30.0], "err": [10.0, 10.0, 10.0]})
    assert _flags(df, {"dead": "max", "err": "min"}) == [True, True, False]


def test_pareto_nan_and_null_never_on_front_and_dominate_nothing() -> None:
    df = pl.DataFrame({"dead": [90.0, math.nan, None, 20.0], "err": [1.0, 0.0, 0.0, 30.0]})
    # rows 1 and 2 would dominate everything if their missing sparsity were ignored
    assert _flags(df, {"dead": "max", "err": "min"}) == [True, False, False, False]


def test_pareto_empty_frame_and_missing_column() -> None:
    empty = pl.DataFrame(schema={"a": pl.Float64, "b": pl.Float64})
    assert _flags(empty, {"a": "min", "b": "max"}) == []
    with pytest.raises(ValueError, match="no column"):
        results.pareto_front(empty, {"c": "min"})




def epoch_rows(trial_id: str, test_err: list[float], dead_gamma: list[float],
               dead_act: list[float | None]) -> list[dict[str, Any]]:
    return [{"trial_id": trial_id, "epoch": e, "lr": 0.1, "train_loss": 1.0, "test_loss": 1.0, "test_err": err,
             "dead_gamma_pct": g, "dead_act_pct": a}
            for e, (err, g, a) in enumerate(zip(test_err, dead_gamma, dead_act), start=1)]


def test_trajectories_spread_over_seeds(two_configs) -> None:
    trials, _ = two_configs
    ok = trials.filter(pl.col("status") == "ok").sort("optimizer", "seed")["trial_id"].to_list()
    failed = trials.filter(pl.col("status") == "failed")["trial_id"].item()
    rows = [
        *epoch_rows(ok[0], [30.0, 20.0, 10.0], [0.0, 10.0, 40.0], [None, None, 45.0]),  # adam seed 0
        *epoch_rows(ok[1], [34.0, math.nan, 12.0], [0.0, 20.0, 60.0], [None, None, 55.0]),  # adam seed 1
        *epoch_rows(ok[2], [40.0, 30.0, 20.0], [0.0, 0.0, 1.0], [None, None, 1.0]),  # sgd seed 0
        *epoch_rows(ok[3], [42.0, 32.0, 22.0], [0.0, 0.0, 3.0], [None, None, 3.0]),  # sgd seed 1
        *epoch_rows(failed, [99.0, 99.0, 99.0], [99.0, 99.0, 99.0], [99.0, 99.0, 99.0]),
    ]
    epochs = frame(rows, "epochs")
    traj = figures.trajectories(epochs, trials)
    assert traj.equals(figures.trajectories(epochs.lazy(), trials))  # a lazy scan gives the same
    assert set(traj["metric"]) == set(figures.TRAJECTORY_METRICS)

    def at(config: str, metric: str, epoch: int) -> dict[str, Any]:
        return traj.filter((pl.col("config") == config) & (pl.col("metric") == metric)
                           & (pl.col("epoch") == epoch)).row(0, named=True)

    gamma = at("optimizer=adam", "dead_gamma_pct", 3)
    assert (gamma["n"], gamma["mean"], gamma["min"], gamma["max"]) == (2, 50.0, 40.0, 60.0)
    assert gamma["std"] == pytest.approx(math.sqrt(200.0))
    # the NaN test error of adam seed 1 at epoch 2 is left out, not averaged in
    err = at("optimizer=adam", "test_err", 2)
    assert (err["n"], err["mean"], err["std"]) == (1, 20.0, None)
    # dead by activation only where measured; the failed trial's 99s never count
    act = traj.filter(pl.col("metric") == "dead_act_pct")
    assert act["epoch"].to_list() == [3, 3] and act["max"].to_list() == [55.0, 3.0]
    assert traj["max"].max() < 99.0


def test_pareto_seed_points_and_a_one_point_front(two_configs) -> None:
    trials, layers = two_configs
    seeds = figures.seed_points(trials)
    assert seeds.height == 4 and set(seeds["config"]) == {"optimizer=adam", "optimizer=sgd"}
    assert sorted(seeds.filter(pl.col("optimizer") == "adam")["test_err"]) == [10.0, 12.0]
    points = results.pareto_points(results.aggregate(trials, layers))
    fig = plots.pareto_figure(points, seeds)
    front = next(t for t in fig.data if t.name.startswith("Pareto front"))
    assert front.mode == "lines+markers" and len(front.x) == 1  # adam alone: still drawn, as a ring
    assert next(t for t in fig.data if t.name == "each seed").marker.opacity < 1
