"""Bad input to the CLI: one clear message, exit code 2, no traceback, no result touched."""

import re

import pytest
import torch

from .integration import TINY, run_cli, write_sweep


@pytest.fixture
def results(tmp_path):
    """A results folder holding an earlier sweep's file, which no failed command may touch."""
    folder = tmp_path / "results" / "tiny" / "trials"
    folder.mkdir(parents=True)
    (folder / "earlier.parquet").write_bytes(b"kept")
    return tmp_path / "results"


def _snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "sweep_text, extra, expected",
    [
        (TINY + "grid: {optimiser: [adam]}\n", [], "did you mean 'optimizer'"),
        (TINY + "grid: {strength: [-1.0]}\n", [], "train.strength"),
        (TINY.replace("synthetic", "cifar10"), [], "needs `root`"),
        (TINY.replace("{name: synthetic, n_train: 256, n_test: 64}", "{name: cifar10, root: /nonexistent/cifar}"),
         [], "download"),
        (TINY.replace("{name: synthetic, n_train: 256, n_test: 64}", "{name: imagefolder, root: /nonexistent/tiny}"),
         [], "train/"),
        ("train: [\n", [], "not valid YAML"),
        ("", [], "empty"),
        (TINY, ["--set", "train.epochs"], "expected KEY=VALUE"),
        (TINY, ["--set", "train.epochs=-3"], "train.epochs: Input should be greater than 0"),
        (TINY, ["--set", "nonsense.key=1"], "unknown key"),
        (TINY, ["--set", "method=l1norm", "--set", "fraction=1.5"], "prune.fraction: Input should be less than 1"),
        (TINY, ["--set", "method=pruned"], "unknown pruning method 'pruned'"),
        (TINY, ["--set", "method=slimming", "--set", "fraction=0.5"], "set train.reg: l1_gamma"),
        (TINY, ["--address", "127.0.0.1:1"], "unreachable"),
    ],
)
def test_bad_input_exits_2_with_one_message(tmp_path, results, sweep_text, extra, expected):
    before = _snapshot(results)
    sweep = write_sweep(tmp_path, sweep_text)
    out = run_cli(sweep, "--results", results, *extra, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert expected in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert _without_ray_notices(out.stderr).startswith("error: ")
    assert _snapshot(results) == before


def _without_ray_notices(stderr: str) -> str:
    """stderr less Ray's own log lines (`2026-01-01 10:00:00,000\tWARNING file.py:85 -- ...`): starting
    an embedded Ray logs whether token authentication is on, before a check that needs the cluster
    (the data on every node) can fail."""
    return "".join(line for line in stderr.splitlines(keepends=True)
                   if not re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\t[A-Z]+ \S+:\d+ -- ", line))


def test_missing_sweep_file_and_unwritable_results(tmp_path, results):
    out = run_cli(tmp_path / "nope.yaml", timeout=60)
    assert out.returncode == 2 and "no such sweep file" in out.stderr
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    sweep = write_sweep(tmp_path, TINY)
    out = run_cli(sweep, "--results", blocker / "results", timeout=60)
    assert out.returncode == 2 and "cannot be written" in out.stderr
    assert "Traceback" not in out.stderr


def test_dry_run_lists_trials_and_runs_nothing(tmp_path):
    sweep = write_sweep(tmp_path, TINY + "grid: {optimizer: [adam, sgd]}\nseeds: [0, 1]\n")
    out = run_cli(sweep, "--results", tmp_path / "results", "--dry-run", timeout=60)
    assert out.returncode == 0
    assert "4 trials" in out.stdout and 'optimizer="sgd" seed=1' in out.stdout
    assert not (tmp_path / "results").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_exits_2_before_anything_runs(tmp_path, results):
    before = _snapshot(results)
    sweep = write_sweep(tmp_path, TINY.replace("device: cpu", "device: cuda"))
    out = run_cli(sweep, "--results", results, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.startswith("error: device 'cuda': torch ") and out.stderr.count("\n") == 1
    assert "set device: cpu (or auto)" in out.stderr and "--address" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert _snapshot(results) == before and not (results / "tiny" / "_tune").exists()
