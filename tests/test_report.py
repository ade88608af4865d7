"""The report end to end, on a results folder written through the real ResultStore (real Parquet,
the real schemas), on results of an earlier version, and the CLI's handling of bad input."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator import figures, report, results
from orchestrator.store import TABLES, ResultStore
from sparsity_core.config import TrialConfig

from .rows import row

ROOT = Path(__file__).resolve().parent.parent
OLD_RESULTS = Path(__file__).resolve().parent / "fixtures" / "results-0.1.0" / "quick"  # written by 0.1.0
N_FILTERS = 4  # per layer: a BasicNet shape at a tiny width
LAYERS = [f"C{i}" for i in range(1, 8)]
# (optimizer, strength) -> dead filters per layer at the final epoch (of 4), and test error
RUNS = {
    ("adam", 1e-4): ([1, 0, 0, 1, 1, 2, 2], 10.0),
    ("adam", 1e-3): ([2, 2, 1, 3, 3, 4, 4], 13.0),
    ("sgd", 1e-4): ([0, 0, 0, 0, 0, 0, 0], 11.0),
    ("sgd", 1e-3): ([2, 1, 1, 0, 1, 0, 0], 20.0),
}


@pytest.fixture(scope="module", autouse=True)
def lowgrad_cache(tmp_path_factory):
    """The low-gradient simulation's cache in a temporary folder, not the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.mktemp("cache")
        mp.setenv("XDG_CACHE_HOME", str(folder))
        yield folder


def write_trial(store: ResultStore, optimizer: str, strength: float, seed: int) -> None:
    """One ok trial of RUNS with two epochs, its layers and two per-filter snapshots."""
    cfg = TrialConfig.model_validate({"train": {"optimizer": optimizer, "reg": "l2", "strength": strength,
                                                "epochs": 2, "snapshot_every": 1}, "seed": seed})
    tid = cfg.trial_id
    dead, err = RUNS[(optimizer, strength)]
    err += seed * 0.5
    total = 100.0 * sum(dead) / (N_FILTERS * len(LAYERS))
    store.write("epochs", tid, [row("epochs", trial_id=tid, epoch=e, lr=1e-3, train_loss=0.5 / e,
                                    test_loss=0.6 / e, test_err=err + 2 - e, dead_gamma_pct=total * e / 2,
                                    dead_act_pct=None if e == 1 else total, diverged=False) for e in (1, 2)])
    store.write("layers", tid, [row("layers", trial_id=tid, epoch=e, layer=layer, n_filters=N_FILTERS,
                                    dead_gamma=n if e == 2 else 0, dead_act=n if e == 2 else None)
                                for e in (1, 2) for layer, n in zip(LAYERS, dead)])
    filters: list[dict[str, Any]] = []
    for e in (1, 2):
        for layer, n in zip(LAYERS, dead):
            for f in range(N_FILTERS):
                is_dead = e == 2 and f < n
                filters.append(row("filters", trial_id=tid, epoch=e, layer=layer, filter=f,
                                   gamma=0.0 if is_dead else 1.0 - 0.1 * f, beta=-0.2 * f,
                                   max_act=None if e == 1 else (0.0 if is_dead else 2.0),
                                   universality=None if e == 1 else (0.0 if is_dead else 0.25 * (f + 1))))
    store.write("filters", tid, filters)
    store.write("trials", tid, [row(
        "trials", trial_id=tid, sweep=store.sweep, status="ok", **cfg.flat(), epochs_run=2,
        train_loss=0.25, test_loss=0.3, test_err=err, dead_gamma_pct=total, dead_act_pct=total,
        wall_time_s=1.0, code_version="test", error="", config_json=cfg.model_dump_json(),
        conv_params_pruned_pct=total, flops_pruned_pct=total / 2, pruned_speedup=1.5,
        pruned_test_err=err, pruned_by="dead_gamma", filters_removed_pct=total, trained_test_err=err,
        unfinetuned_test_err=err, finetuned=False,
    )])


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    store = ResultStore(str(tmp_path_factory.mktemp("results")), "demo")
    for optimizer, strength in RUNS:
        for seed in (0, 1):
            write_trial(store, optimizer, strength, seed)
    failed = TrialConfig.model_validate({"train": {"optimizer": "adadelta"}})
    store.write("trials", failed.trial_id, [row("trials", trial_id=failed.trial_id, sweep="demo", status="failed",
                                                **failed.flat(), epochs_run=0, error="boom")])
    return Path(store.path)


@pytest.fixture(scope="module")
def built(sweep_dir: Path) -> Path:
    return report.build_report(sweep_dir, lowgrad_iterations=300)


def test_every_file_is_written(built: Path) -> None:
    expected = {"table.md", "table.csv", "claims.md", "claims.csv", "early_stopping.md", "pruning.csv", "index.html",
                report.PLOTLY_JS, *report.FIGURES}
    assert expected == {p.name for p in built.iterdir()}
    assert built == built.parent / "report"


def test_html_pages_share_one_plotly_beside_them(built: Path) -> None:
    assert "plotly.js v" in (built / report.PLOTLY_JS).read_text()[:1000]  # the library itself
    for name in report.FIGURES:
        text = (built / name).read_text()
        assert f'src="{report.PLOTLY_JS}"' in text, name  # loaded from the folder: no network needed
        assert "plotly.js v" not in text and "cdn.plot.ly" not in text, name
    index = (built / "index.html").read_text()
    assert all(f'href="{name}"' in index for name in (*report.FIGURES, "table.md", "claims.md"))


def test_trajectories_and_pareto_pages_show_seeds(built: Path) -> None:
    trajectories = (built / "trajectories.html").read_text()
    assert all(t in trajectories for t in ("dead filters by gamma (%)", "dead filters by activation (%)",
                                           "test error (%)", "optimizer=adam strength=0.001"))
    pareto = (built / "pareto.html").read_text()
    assert "each seed" in pareto and "Pareto front (" in pareto and "circle-open" in pareto


def test_table_has_layers_configurations_and_the_paper(built: Path) -> None:
    md = (built / "table.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| optimizer"))
    assert all(f"| {layer} |" in header for layer in LAYERS)
    assert "| strength |" in header and "| seed" not in header
    assert "| adam | 0.001 | 2 |" in md  # two seeds, the failed trial left out
    # 2 epochs are not the supplement's 325: directions beside its rows, no numbers
    beside = md.split("## Beside the paper", 1)[1].split("## Implicit", 1)[0]
    assert "epochs=2 (paper: 325)" in beside and "+56.0 (supp. Table 1 cifar10) | same |" in beside
    csv = pl.read_csv(built / "table.csv")
    assert csv.height == 4
    adam = csv.filter((pl.col("optimizer") == "adam") & (pl.col("strength") == 1e-3)).row(0, named=True)
    assert adam["C7_mean"] == 100.0 and adam["test_err_mean"] == pytest.approx(13.25)
    assert "paper_C7" not in csv.columns
    assert {"config", "n_seeds", "trial_ids", "code_versions"} <= set(csv.columns)


def test_implicit_vs_explicit_pruning_table(built: Path) -> None:
    md = (built / "table.md").read_text()
    section = md.split("## Implicit vs explicit pruning", 1)[1]
    header = next(line for line in section.splitlines() if line.startswith("| curve"))
    assert "| FLOPs removed | speedup | trained test err | pruned test err | n |" in header
    adam = next(line for line in section.splitlines() if "optimizer=adam strength=0.001 |" in line)
    assert adam.startswith("| implicit |") and "| 13.25 ± 0.35 | 13.25 ± 0.35 | 2 |" in adam
    csv = pl.read_csv(built / "pruning.csv")
    assert set(csv["method"]) == {"implicit"} and csv.height == 4 and csv["finetuned"].to_list() == [False] * 4
    assert "test error against FLOPs removed" in (built / "pruning.html").read_text()


def test_claims_are_checked(built: Path) -> None:
    csv = pl.read_csv(built / "claims.csv")
    status = dict(csv.filter(pl.col("comparison").is_null()).select("claim", "status").rows())
    assert status[1] == "holds"  # adam more than twice as sparse as sgd at each strength
    assert status[3] == "holds"  # 1e-3 sparser than 1e-4 for both optimizers
    assert status[7] == "not testable"  # one batch size
    assert set(status) == set(range(1, 11))
    assert f"## 1. holds: {csv['text'][0]}" in (built / "claims.md").read_text()


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    assert report.main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no such results folder" in err and err.count("\n") == 1
    (tmp_path / "empty" / "trials").mkdir(parents=True)
    assert report.main([str(tmp_path / "empty")]) == 2
    assert "no trials" in capsys.readouterr().err
    assert report.main([]) == 2
    assert "--lowgrad" in capsys.readouterr().err


def test_only_failed_trials_is_bad_input(tmp_path: Path, capsys) -> None:
    store = ResultStore(str(tmp_path), "broken")
    cfg = TrialConfig()
    failed = row("trials", trial_id=cfg.trial_id, status="failed", **cfg.flat(), error="x")
    store.write("trials", cfg.trial_id, [failed])
    assert report.main([store.path]) == 2
    assert "no trial finished ok (1 failed)" in capsys.readouterr().err


def test_a_damaged_file_is_bad_input_and_nothing_is_written(sweep_dir: Path, tmp_path: Path, capsys) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(sweep_dir, damaged)
    epochs = sorted((damaged / "epochs").glob("*.parquet"))[0]
    epochs.write_bytes(epochs.read_bytes()[: epochs.stat().st_size // 2] + epochs.read_bytes()[-8:])
    assert report.main([str(damaged), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "cannot read its Parquet tables" in err and "if the sweep is still running" in err
    assert err.count("\n") == 1 and not (tmp_path / "r").exists()


def test_unknown_layer_is_bad_input(sweep_dir: Path, tmp_path: Path, capsys) -> None:
    assert report.main([str(sweep_dir), "--out", str(tmp_path / "r"), "--layers", "C9"]) == 2
    assert "valid: C1, C2" in capsys.readouterr().err


def test_lowgrad_alone(tmp_path: Path) -> None:
    assert report.main(["--lowgrad", str(tmp_path / "lg"), "--lowgrad-iterations", "200"]) == 0
    assert {p.name for p in (tmp_path / "lg").iterdir()} == {"lowgrad.html", report.PLOTLY_JS}


def test_lowgrad_is_computed_once(lowgrad_cache: Path) -> None:
    """The second call, in a fresh process, reads the cached result and never imports torch."""
    first = report.lowgrad_data(150)
    assert len(list((lowgrad_cache / "filter-sparsity").glob("lowgrad-*.parquet"))) >= 1
    code = ("import sys, polars as pl; from orchestrator import report; "
            "report.lowgrad_data(150).write_parquet(sys.argv[1]); print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(lowgrad_cache / "again.parquet")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    assert pl.read_parquet(lowgrad_cache / "again.parquet").equals(first)
    # keyed by its parameters: another number of noise seeds is another file
    assert first["seed"].n_unique() == 10 and report.lowgrad_data(150, noise_seeds=2)["seed"].n_unique() == 2
    assert len(list((lowgrad_cache / "filter-sparsity").glob("lowgrad-*.parquet"))) >= 2


def test_runs_as_a_script_without_traceback(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "orchestrator/report.py", str(tmp_path / "nope")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr


def test_results_written_before_a_setting_existed_still_group(tmp_path: Path) -> None:
    """A file without a newer setting's column reads with that setting's default, so its trial
    groups with a new trial of the same configuration."""
    store = ResultStore(str(tmp_path), "old")
    rows = []
    for seed in (0, 1):
        cfg = TrialConfig.model_validate({"seed": seed})
        rows.append(row("trials", trial_id=cfg.trial_id, status="ok", **cfg.flat(), test_err=10.0 + seed))
    store.write("trials", rows[0]["trial_id"], [rows[0]])
    old_schema = pa.schema([f for f in TABLES["trials"] if f.name != "remedy"])
    pq.write_table(pa.Table.from_pylist([{k: v for k, v in rows[1].items() if k != "remedy"}], schema=old_schema),
                   f"{store.path}/trials/{rows[1]['trial_id']}.parquet")
    tables = results.load_results(store.path)
    assert tables.sweep == "old" and tables.trials["remedy"].to_list() == ["none", "none"]
    filters = tables.filters.collect()
    assert filters.is_empty() and filters.columns == TABLES["filters"].names
    agg = results.aggregate(results.per_trial(tables.trials, tables.layers))
    assert agg.height == 1 and agg["n_seeds"].item() == 2


def test_sweep_without_filters_still_reports(tmp_path: Path) -> None:
    store = ResultStore(str(tmp_path), "bare")
    for optimizer in ("adam", "sgd"):
        cfg = TrialConfig.model_validate({"train": {"optimizer": optimizer}})
        store.write("trials", cfg.trial_id, [row("trials", trial_id=cfg.trial_id, status="ok", **cfg.flat(),
                                                 test_err=10.0, dead_gamma_pct=5.0)])
    out = report.build_report(store.path, tmp_path / "out", lowgrad_iterations=100)
    assert "no per-filter snapshots" in (out / "gamma_beta.html").read_text()
    assert "no per-layer counts" in (out / "layers.html").read_text()
    assert "| adam | 1 |" in (out / "table.md").read_text()


def test_results_of_version_0_1_0_still_report(tmp_path: Path) -> None:
    sweep = tmp_path / "quick"
    shutil.copytree(OLD_RESULTS, sweep)
    out = report.build_report(sweep, lowgrad_iterations=100)
    table = (out / "table.md").read_text()
    assert all(f"| {optimizer} | {reg} |" in table for optimizer in ("adam", "sgd") for reg in ("l2", "wd"))
    assert {p.name for p in out.iterdir()} >= {"index.html", *report.FIGURES}
    tables = results.load_results(sweep)
    traj = figures.trajectories(tables.epochs, tables.trials).filter(pl.col("metric") == "dead_gamma_pct")
    assert traj["config"].n_unique() == 4 and traj["epoch"].max() == 300


def test_unreadable_uri_is_bad_input(capsys) -> None:
    assert report.main(["nosuchscheme://bucket/sweep"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "cannot open it" in err and err.count("\n") == 1


def test_out_must_be_local(sweep_dir: Path, capsys) -> None:
    assert report.main([str(sweep_dir), "--out", "s3://bucket/report"]) == 2
    assert "local folder" in capsys.readouterr().err


def test_remedies_show_revived_alive_and_recovered_side_by_side() -> None:
    from .planted import frame, trial_row

    rows = [trial_row(remedy=remedy, seed=seed, test_err=2.0, dead_gamma_pct=5.0, remedied=counts[0],
                      remedied_alive=counts[1], recovered=counts[2])
            for remedy, counts in (("psbn", (6, 5, 0)), ("revive", (8, 8, 7))) for seed in (0, 1)]
    rows.append(trial_row(remedy="none", test_err=2.0, dead_gamma_pct=9.0))
    table = report.results_markdown(results.aggregate(results.per_trial(frame(rows, "trials"), frame([], "layers"))))
    assert {"revived/shifted", "of those alive (thresholds)", "of those recovered (function)"} <= set(table.columns)
    psbn = table.filter(pl.col("remedy") == "psbn").row(0, named=True)
    assert (psbn["revived/shifted"], psbn["of those alive (thresholds)"], psbn["of those recovered (function)"]) \
        == ("6.0 ± 0.0", "5.0 ± 0.0", "0.0 ± 0.0")
    assert table.filter(pl.col("remedy") == "none")["revived/shifted"].to_list() == [None]


def _write_explicit(store: ResultStore, seed: int) -> None:
    """An L1-norm pipeline's trial: its last epoch measures the cut, fine-tuned network (77% dead
    filters, an error of 30%), not a trained one."""
    cfg = TrialConfig.model_validate({"train": {"optimizer": "sgd", "reg": "l2", "strength": 5e-4, "epochs": 2},
                                      "prune": {"method": "l1norm", "fraction": 0.5, "finetune_epochs": 1},
                                      "seed": seed})
    tid = cfg.trial_id
    store.write("epochs", tid, [row("epochs", trial_id=tid, epoch=e, lr=0.1, train_loss=0.5, test_loss=0.6,
                                    test_err=30.0, dead_gamma_pct=77.0, diverged=False) for e in (1, 2, 3)])
    store.write("layers", tid, [row("layers", trial_id=tid, epoch=3, layer=layer, n_filters=2, dead_gamma=1,
                                    dead_act=None) for layer in LAYERS])
    store.write("trials", tid, [row(
        "trials", trial_id=tid, sweep=store.sweep, status="ok", **cfg.flat(), epochs_run=3, train_loss=0.5,
        test_loss=0.6, test_err=30.0, dead_gamma_pct=77.0, wall_time_s=1.0, code_version="test", error="",
        config_json=cfg.model_dump_json(), conv_params_pruned_pct=75.0, flops_pruned_pct=60.0, pruned_speedup=2.0,
        pruned_test_err=30.0, pruned_by="l1norm", filters_removed_pct=50.0, trained_test_err=12.0,
        unfinetuned_test_err=80.0, finetuned=True,
    )])


def test_explicit_pipelines_appear_in_the_pruning_section_only(tmp_path: Path) -> None:
    """table.md's main table, table.csv, layers.html and trajectories.html describe trained networks:
    an explicit pipeline's numbers (of its cut, fine-tuned network) are in the pruning section only."""
    store = ResultStore(str(tmp_path), "mixed")
    for seed in (0, 1):
        write_trial(store, "adam", 1e-3, seed)
        _write_explicit(store, seed)
    out = report.build_report(store.path, tmp_path / "out", lowgrad_iterations=100)
    md = (out / "table.md").read_text()
    main, pruning = md.split("## Implicit vs explicit pruning")
    assert "77.0" not in main and "l1norm" not in main.split("Test errors in %.")[-1].split("\n", 1)[1]
    assert "the 1 explicit pruning configuration(s) (slimming, l1norm) are in the pruning section" in main
    assert "| l1norm (fine-tuned) |" in pruning and "| 60.0 ± 0.0 |" in pruning
    csv = pl.read_csv(out / "table.csv")
    assert csv.height == 1 and csv["dead_gamma_pct_mean"].to_list() == [pytest.approx(100 * 19 / 28)]
    assert set(pl.read_csv(out / "pruning.csv")["method"]) == {"implicit", "l1norm"}
    for page in ("layers.html", "trajectories.html", "pareto.html"):
        assert "method=l1norm" not in (out / page).read_text() and "sgd" not in (out / page).read_text(), page
    assert "1 configurations of implicit sparsity" in (out / "index.html").read_text()
    assert "1 explicit pruning configurations" in (out / "index.html").read_text()
    # the table and the figures name the implicit configuration alike
    label = csv["config"].to_list()
    assert label == ["optimizer=adam reg=l2 strength=0.001"] and label[0] in (out / "trajectories.html").read_text()
    # a sweep of explicit pipelines alone still reports: its pruning, no implicit table
    alone = ResultStore(str(tmp_path), "alone")
    _write_explicit(alone, 0)
    md = (report.build_report(alone.path, tmp_path / "alone_out", lowgrad_iterations=100) / "table.md").read_text()
    assert "No configuration of implicit sparsity." in md and "| l1norm (fine-tuned) |" in md
