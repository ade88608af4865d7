"""The report's data step on hand-made frames: aggregation over seeds and the figures' data (the paper
beside it: test_paper.py; the claims: test_claims.py)."""

from __future__ import annotations

import math
from typing import Any

import polars as pl
import pytest

from orchestrator import figures, plots, results

from .planted import frame, trial_row

LAYERS = {"C1": 64, "C2": 128, "C3": 128, "C4": 256, "C5": 256, "C6": 512, "C7": 512}


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
    agg = results.aggregate(results.per_trial(trials, layers))
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
    layers = [{"trial_id": row["trial_id"], "epoch": row["epochs_run"], "layer": f"C{i}", "n_filters": 10,
               "dead_gamma": i, "dead_act": None, "revived": None} for i in range(1, 14)]
    agg = results.aggregate(results.per_trial(frame([row], "trials"), frame(layers, "layers")))
    assert agg["test_err_std"].to_list() == [None]
    means = [c for c in agg.columns if c.startswith("C") and c.endswith("_mean")]
    assert means == [f"C{i}_mean" for i in range(1, 14)]
    assert agg["C13_mean"].to_list() == [130.0]
    assert agg["config"].to_list() == ["optimizer=adam reg=l2 strength=0.001"]  # nothing varies


def test_configurations_are_grouped_by_every_setting_but_seed() -> None:
    rows = [trial_row(optimizer="adam", reg="l2", strength=s, seed=seed, batch_size=b, test_err=1.0)
            for s in (1e-3, 1e-4) for b in (40, 80) for seed in (0, 1, 2)]
    agg = results.aggregate(results.per_trial(frame(rows, "trials"), frame([], "layers")))
    assert agg.height == 4 and set(agg["n_seeds"]) == {3}
    assert results.varying_settings(agg) == ["strength", "batch_size"]
    assert agg["config"][0] == "strength=0.0001 batch_size=40"


def test_where_the_data_lives_is_not_part_of_a_configuration() -> None:
    # One configuration's seeds under two roots: a reused row keeps its source sweep's root, a
    # resubmitted job's root is another upload folder. Still one configuration, as its trial ids say.
    rows = [trial_row(optimizer="adam", reg="l2", strength=1e-3, dataset="cifar10", root=root, download=download,
                      seed=seed, test_err=1.0)
            for seed, root, download in ((0, "/home/ray/app/data", False), (1, "/tmp/ray/working_dir/data", True))]
    agg = results.aggregate(results.per_trial(frame(rows, "trials"), frame([], "layers")))
    assert agg.height == 1 and agg["n_seeds"].to_list() == [2]
    assert agg["config"].to_list() == ["optimizer=adam reg=l2 strength=0.001"]
    assert not {"root", "download"} & set(results.CONFIG_COLUMNS)


# --- figure data -----------------------------------------------------------------------------------


def test_pareto_points_and_layer_profile(two_configs) -> None:
    agg = results.aggregate(results.per_trial(*two_configs))
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
    points = results.pareto_points(results.aggregate(results.per_trial(trials, layers)))
    fig = plots.pareto_figure(points, seeds)
    front = next(t for t in fig.data if t.name.startswith("Pareto front"))
    assert front.mode == "lines+markers" and len(front.x) == 1  # adam alone: still drawn, as a ring
    assert next(t for t in fig.data if t.name == "each seed").marker.opacity < 1


def _pruned_trial(seed: int, flops: float, err: float, finetuned: bool = False, **settings: Any) -> dict[str, Any]:
    method = settings.get("method", "none")
    return trial_row(seed=seed, flops_pruned_pct=flops, pruned_test_err=err, conv_params_pruned_pct=flops + 5,
                     filters_removed_pct=flops / 2, trained_test_err=2.0, pruned_speedup=1.5, finetuned=finetuned,
                     pruned_by="dead_gamma" if method == "none" else method, **settings)


def test_pruning_table_and_figure_on_planted_trials() -> None:
    implicit = {"optimizer": "adam", "reg": "l2"}
    l1 = {"optimizer": "sgd", "reg": "l2", "strength": 5e-4, "method": "l1norm", "finetune_epochs": 2}
    rows = [
        _pruned_trial(0, 10.0, 2.0, **implicit, strength=1e-3), _pruned_trial(1, 14.0, 2.4, **implicit, strength=1e-3),
        _pruned_trial(0, 4.0, 1.8, **implicit, strength=1e-4), _pruned_trial(1, 6.0, 1.6, **implicit, strength=1e-4),
        _pruned_trial(0, 50.0, 3.0, True, **l1, fraction=0.5), _pruned_trial(1, 50.0, 3.5, True, **l1, fraction=0.5),
        _pruned_trial(0, 30.0, 2.5, True, **l1, fraction=0.3),
        # results of 0.1.0: no filters_removed_pct, no finetuned
        {**trial_row(seed=0, optimizer="amsgrad", reg="l2", strength=1e-3, flops_pruned_pct=1.0, pruned_test_err=3.0)},
        trial_row("failed", seed=2, **implicit, strength=1e-3),
    ]
    table = figures.pruning_table(frame(rows, "trials"))
    assert table.columns[:4] == ["method", "curve", "configuration", "dataset"]
    assert table["curve"].to_list() == ["implicit"] * 3 + ["l1norm (fine-tuned)"] * 2  # one network: no suffix
    strong = table.filter(pl.col("configuration").str.contains("optimizer=adam strength=0.001"))
    row = strong.row(0, named=True)
    assert (row["flops_pruned_pct"], row["pruned_test_err"], row["pruned_test_err_min"], row["pruned_test_err_max"],
            row["seeds"]) == (12.0, pytest.approx(2.2), 2.0, 2.4, 2)  # the failed seed left out
    assert row["conv_params_pruned_pct"] == 17.0 and row["filters_removed_pct"] == 6.0 and not row["finetuned"]
    # the trials' own names, nothing renamed: a column is a PruneMetrics field, or its _std/_min/_max
    assert set(figures.PRUNING_COLUMNS) <= set(table.columns) and "test_err" not in table.columns
    old = table.filter(pl.col("configuration").str.contains("amsgrad")).row(0, named=True)
    assert old["filters_removed_pct"] is None and old["finetuned"] is False and old["method"] == "implicit"
    l1_rows = table.filter(pl.col("method") == "l1norm")
    assert l1_rows["flops_pruned_pct"].to_list() == [30.0, 50.0] and l1_rows["finetuned"].all()
    assert l1_rows["fraction"].to_list() == [0.3, 0.5] and l1_rows["seeds"].to_list() == [1, 2]
    fig = plots.pruning_figure(table)
    curves = [t for t in fig.data if t.mode == "lines+markers"]
    assert [t.name for t in curves] == ["implicit", "l1norm (fine-tuned)"]
    assert list(curves[1].x) == [30.0, 50.0] and list(curves[1].error_y.array) == [0.0, 0.25]
    assert sum(t.fill == "toself" for t in fig.data) == 2  # a band of seeds per curve
    # several networks: each curve names its own
    vgg = _pruned_trial(0, 40.0, 5.0, **implicit, strength=1e-3, model="vgg16")
    curves = set(figures.pruning_table(frame([*rows, vgg], "trials"))["curve"])
    assert {"implicit model=basicnet", "implicit model=vgg16", "l1norm (fine-tuned) model=basicnet"} == curves
    assert "no pruning measured" in plots.pruning_figure(table.clear()).layout.annotations[0].text


def test_lowgrad_bands_over_the_noise_seeds() -> None:
    values = {0: [1.0, 0.5, 0.1], 1: [1.0, 0.6, 0.3], 2: [1.0, 0.9, 0.2]}  # seed -> value at iterations 0, 10, 20
    sim = pl.DataFrame([{"optimizer": o, "strength": 1e-4, "seed": seed, "iteration": 10 * i, "value": v}
                        for o in ("adam", "sgd") for seed, vs in values.items() for i, v in enumerate(vs)],
                       schema=figures.LOWGRAD_SCHEMA)
    bands = figures.lowgrad_bands(sim).filter(pl.col("optimizer") == "adam")
    assert bands["iteration"].to_list() == [0, 10, 20] and bands["seeds"].to_list() == [3, 3, 3]
    assert bands["median"].to_list() == [1.0, 0.6, 0.2]
    assert bands["low"].to_list() == [1.0, 0.5, 0.1] and bands["high"].to_list() == [1.0, 0.9, 0.3]
    fig = plots.lowgrad_figure(figures.lowgrad_bands(sim))
    lines = [t for t in fig.data if t.mode == "lines" and t.fill != "toself"]
    assert [t.name for t in lines] == ["adam", "sgd"] and list(lines[0].y) == pytest.approx([1.0, 0.6, 0.2])
    assert sum(t.fill == "toself" for t in fig.data) == 2  # a band of seeds per optimizer
