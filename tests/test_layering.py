import subprocess
import sys


def test_sparsity_core_imports_no_orchestration_libraries():
    code = (
        "import sys, sparsity_core, sparsity_core.train; "
        "bad = [m for m in ('ray', 'optuna', 'polars', 'plotly', 'pyarrow', 'pandas') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_report_imports_neither_optuna_nor_ray_nor_torch():
    # torch only for the low-gradient simulation, when its cache misses (report.lowgrad_data)
    code = (
        "import sys, orchestrator.report; "
        "bad = [m for m in ('ray', 'optuna', 'torch') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_importing_the_runner_changes_no_environment_variable():
    # The libraries first: some set variables of their own on import (ray, polars, torch._dynamo).
    code = (
        "import os, sys, polars, pyarrow, optuna, ray, ray.tune, sparsity_core; "
        "before = dict(os.environ); import orchestrator.runner, orchestrator.run; "
        "changed = sorted(k for k in {*before, *os.environ} if before.get(k) != os.environ.get(k)); "
        "print(changed); sys.exit(1 if changed else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
