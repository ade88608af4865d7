"""Helpers for tests that run the real CLI (a real local Ray in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(*args: str, timeout: float = 300, script: str = "orchestrator/run.py") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def start_cli(*args: str, script: str = "orchestrator/run.py") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, script, *map(str, args)], cwd=ROOT, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def write_sweep(folder: Path, text: str, name: str = "tiny") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def table(results: Path, sweep: str, name: str) -> pl.DataFrame:
    return pl.scan_parquet(f"{results}/{sweep}/{name}/*.parquet").collect()


TINY = """\
dataset: {name: synthetic, n_train: 256, n_test: 64}
model: {width: 0.125}
train: {epochs: 2, lr_steps: [1], batch_size: 64, optimizer: adam, reg: l2, strength: 1.0e-3}
device: cpu
resources: {cpu: 1}
"""
