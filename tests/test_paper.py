"""The supplement's tables beside our results: numbers only for the same setup, directions otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest

from orchestrator import paper, results, spec
from tests.planted import frame, per_seed, seeds, trial_row

ROOT = Path(__file__).resolve().parent.parent
CIFAR10 = {"dataset": "cifar10", "root": "/data"}  # TrialConfig's defaults are the supplement's schedule
CIFAR100 = {"dataset": "cifar100", "root": "/data"}


def compared(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return paper.compare_with_paper(results.aggregate(results.per_trial(frame(rows, "trials"), frame([], "layers"))),
                                    paper.load_reference())


def test_reference_tables_load_with_defaults() -> None:
    ref = paper.load_reference()
    assert ref.height == 8 + 8 + 5 + 18
    t3 = ref.filter(pl.col("source").str.starts_with("supp. Table 3"))
    assert set(t3["optimizer"]) == {"adam"} and set(t3["strength"]) == {1e-4} and set(t3["dataset"]) == {"cifar100"}
    assert set(ref.filter(pl.col("source") == "supp. Table 1")["activation"]) == {"relu"}


def test_cifar10_at_the_papers_setup_is_compared_numerically() -> None:
    """A full-width BasicNet on CIFAR-10, batch 40, 325 epochs with LR / 10 at 250: supp. Table 1's row."""
    rows = [trial_row(**CIFAR10, optimizer="adam", reg="l2", strength=1e-3, seed=s, test_err=e, dead_gamma_pct=d)
            for s, (e, d) in enumerate(((13.5, 80.0), (13.7, 82.0)))]
    got = compared(rows)
    assert got.height == 1
    row = got.row(0, named=True)
    assert row["paper_source"] == "supp. Table 1 cifar10"
    assert row["paper_test_err"] == 13.1 and row["diff_test_err"] == pytest.approx(13.6 - 13.1)
    assert row["paper_dead_gamma_pct"] == 83.0 and row["diff_dead_gamma_pct"] == pytest.approx(81.0 - 83.0)
    # the paper's base LR given explicitly, or the batch size given as the reference: still its setup
    explicit_lr = trial_row(**CIFAR10, optimizer="adam", reg="l2", strength=1e-3, lr=1e-3, test_err=13.0)
    assert compared([explicit_lr]).height == 1
    assert compared([trial_row(**CIFAR10, optimizer="adam", reg="l2", strength=1e-3, reference_batch_size=40,
                               test_err=13.0)]).height == 1


@pytest.mark.parametrize("change", [
    {"dataset": "digits", "root": None}, {"width": 0.5}, {"epochs": 300}, {"lr_steps": [200]}, {"batch_size": 80},
    {"image_size": 64}, {"remedy": "revive"}, {"lr": 2e-3}, {"model": "vgg16"}, {"augment": False},
    {"method": "l1norm", "fraction": 0.5},
])
def test_another_setup_gets_no_paper_numbers(change: dict[str, Any]) -> None:
    settings = {**CIFAR10, "optimizer": "adam", "reg": "l2", "strength": 1e-3, **change}
    assert compared([trial_row(**settings, test_err=13.0)]).is_empty()


def test_a_configuration_matches_every_table_it_is_in() -> None:
    """AMSGrad, L2 1e-4 on CIFAR-100 is in supp. Tables 2 and 4: both rows, Table 4's by-activation
    number included; Adam's is in Tables 2 and 3 (the baseline)."""
    rows = [trial_row(**CIFAR100, optimizer="amsgrad", reg="l2", strength=1e-4, test_err=36.0, dead_gamma_pct=12.0,
                      dead_act_pct=19.0),
            trial_row(**CIFAR100, optimizer="adam", reg="l2", strength=1e-4, test_err=36.0, dead_gamma_pct=45.0)]
    got = compared(rows)
    sources = got.group_by("optimizer").agg(pl.col("paper_source").sort())
    assert dict(sources.rows()) == {"amsgrad": ["supp. Table 2 cifar100", "supp. Table 4 cifar100"],
                                    "adam": ["supp. Table 2 cifar100", "supp. Table 3 (baseline) cifar100"]}
    table4 = got.filter(pl.col("paper_source") == "supp. Table 4 cifar100").row(0, named=True)
    assert table4["paper_dead_act_pct"] == 20.0 and table4["diff_dead_act_pct"] == pytest.approx(-1.0)
    baseline = got.filter(pl.col("paper_source").str.contains("Table 3")).row(0, named=True)
    assert baseline["paper_dead_gamma_pct"] == 46.0  # Table 2 says 47 for the same row
    leaky = compared([trial_row(**CIFAR100, optimizer="adam", reg="l2", strength=1e-4, activation="leaky_relu",
                                negative_slope=0.1, test_err=37.0)])
    assert leaky["paper_source"].to_list() == ["supp. Table 2 cifar100"] and leaky["paper_test_err"].item() == 37.2
    # a remedy that only sets settings trained what its row says (rows record the settings trained)
    remedy = compared([trial_row(**CIFAR100, optimizer="adam", reg="l2", strength=1e-4, remedy="leaky_relu",
                                 activation="leaky_relu", negative_slope=0.1, test_err=37.0)])
    assert remedy["paper_source"].to_list() == ["supp. Table 2 cifar100"]


def test_setup_mismatch_names_what_differs() -> None:
    agg = results.aggregate(results.per_trial(frame([trial_row(optimizer="adam", width=0.125, epochs=300, test_err=1.0)], "trials"),
                            frame([], "layers")))
    assert paper.setup_mismatch(agg, paper.load_reference()) == [
        "dataset=digits (paper: cifar10 or cifar100)", "width=0.125 (paper: 1)", "epochs=300 (paper: 325)"]


DIGITS = {"width": 0.125, "epochs": 300, "reg": "l2", "strength": 1e-3}


@pytest.mark.parametrize("adam, sgd, agreement", [
    ([15.0, 17.0], [1.0, 2.0], "same"),
    ([1.0, 2.0], [15.0, 17.0], "opposite"),
    ([10.0, 16.0], [9.0, 15.0], "undecided"),
])
def test_across_setups_only_directions_are_set_beside(adam: list[float], sgd: list[float], agreement: str) -> None:
    rows = seeds([({**DIGITS, "optimizer": "adam"}, adam), ({**DIGITS, "optimizer": "sgd"}, sgd)])
    effects = paper.paper_effects(per_seed(rows), paper.load_reference())
    sparsity = effects.filter(pl.col("metric") == "dead_gamma_pct").row(0, named=True)
    assert sparsity["left"] == "optimizer=adam" and sparsity["right"] == "optimizer=sgd"
    assert sparsity["paper_effect"] == 83.0 - 27.0 and sparsity["paper_source"] == "supp. Table 1 cifar10"
    assert sparsity["agreement"] == agreement and sparsity["n_left"] == 2


def test_directions_for_every_table_with_the_pair() -> None:
    """AMSGrad L2 1e-4 vs 1e-2 is in supp. Table 2 (CIFAR-100) and Table 4 (CIFAR-10 and -100)."""
    rows = seeds([({**DIGITS, "optimizer": "amsgrad", "strength": 1e-4}, [5.0, 6.0]),
                  ({**DIGITS, "optimizer": "amsgrad", "strength": 1e-2}, [60.0, 62.0])])
    effects = paper.paper_effects(per_seed(rows), paper.load_reference()).filter(pl.col("metric") == "dead_gamma_pct")
    assert sorted(effects["paper_source"]) == [
        "supp. Table 2 cifar100", "supp. Table 4 cifar10", "supp. Table 4 cifar100"]
    assert set(effects["agreement"]) == {"same"}
    sgd = seeds([({**DIGITS, "optimizer": "sgd"}, [1.0, 2.0]),
                 ({**DIGITS, "optimizer": "sgd", "reg": "wd"}, [1.0, 1.5])])
    no_change = paper.paper_effects(per_seed(sgd), paper.load_reference()).filter(pl.col("metric") == "dead_gamma_pct")
    assert no_change["agreement"].to_list() == ["paper: no change"]  # SGD L2 1e-3 and WD 1e-3: 27% both


@pytest.mark.parametrize("table", [1, 2, 3, 4])
def test_the_shipped_supplement_sweeps_match_their_tables(table: int) -> None:
    """Every configuration of sweeps/supp_table<N>.yaml is in the supplement's setup and finds its row
    of supp. Table N."""
    trials = spec.load_spec(ROOT / "sweeps" / f"supp_table{table}.yaml").trials
    rows = [{"trial_id": cfg.trial_id, "status": "ok", **cfg.flat(), "test_err": 10.0} for cfg in trials]
    got = compared(rows)
    matched = got.filter(pl.col("paper_source").str.starts_with(f"supp. Table {table}"))
    assert matched["config"].n_unique() == len({cfg.model_copy(update={"seed": 0}).trial_id for cfg in trials})
