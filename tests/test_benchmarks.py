"""Each benchmark runs at a toy size and ends with its JSON line: a benchmark the suite never runs
breaks unseen when the code under it moves (the timings themselves are never asserted). All but
sweep_overhead.py, which takes 22 s even at two trials (Ray's start and Tune's per-trial cost are
what it measures), against a suite kept near 15 minutes on 2 cores."""

from __future__ import annotations

import json

import pytest
import torch

from .integration import run_cli


def _last_json(*args: str, timeout: float = 300) -> dict:
    proc = run_cli(*args[1:], script=args[0], timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_trainer_throughput_prices_each_variant():
    result = _last_json("benchmarks/trainer_throughput.py", "--pack", "2", "--steps", "2", "--warmup", "1",
                        "--repeats", "2", "--threads", "1")
    assert set(result["trials_per_hour"]) == {"naive", "solo", "packed"}
    assert all(v > 0 for v in result["trials_per_hour"].values())
    assert result["pack"] == 2 and result["device"] == "cpu"


def test_report_scale_times_a_report_of_a_synthetic_store(tmp_path):
    result = _last_json("benchmarks/report_scale.py", "--trials", "3", "--epochs", "4", "--report", str(tmp_path))
    assert (result["trials"], result["epochs"]) == (3, 4)
    assert result["report_files"]["plotly.min.js"] > 0 and (tmp_path / "index.html").exists()
    assert result["wall_s"] > 0 and result["peak_rss_mb"] > 0


def test_pruned_speedup_measures_both_networks():
    result = _last_json("benchmarks/pruned_speedup.py", "--batch-sizes", "1", "--warmup", "1", "--repeats", "1")
    assert result["flops_per_image"]["pruned"] < result["flops_per_image"]["full"]
    assert set(result["latency_ms"]["1"]) == {"full", "pruned"} and result["speedup"]["1"] > 0


def test_gpu_check_passes_or_says_it_checked_nothing():
    result = _last_json("benchmarks/gpu_check.py", timeout=600)
    assert result["cuda"] == torch.cuda.is_available() and result["failures"] == 0
    assert result["checks"] or not result["cuda"]


@pytest.mark.integration
def test_early_stopping_compares_both_searches():
    result = _last_json("benchmarks/early_stopping.py", "--trials", "2", "--epochs", "3", "--dataset", "synthetic",
                        "--seeds", "0")
    assert set(result["totals"]) == {"quick_pareto", "quick_pareto_asha"}
    assert all(t["epochs"] > 0 and t["failed"] == 0 for t in result["totals"].values())
    assert "epochs_saved_pct" in result["runs"][0]["replay"]
