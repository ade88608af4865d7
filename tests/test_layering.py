import ast
import subprocess
import sys
from pathlib import Path

import pytest

import sparsity_core


def _run_python(code: str) -> None:
    """Run `code` in a fresh interpreter (nothing imported yet); it exits non-zero to fail."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_sparsity_core_imports_no_orchestration_libraries():
    _run_python(
        "import sys, sparsity_core, sparsity_core.loop; "
        "bad = [m for m in ('ray', 'optuna', 'polars', 'plotly', 'pyarrow', 'pandas') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )


def test_the_report_imports_neither_optuna_nor_ray_nor_torch():
    # torch only for the low-gradient simulation, when its cache misses (report.lowgrad_data)
    _run_python(
        "import sys, orchestrator.report; "
        "bad = [m for m in ('ray', 'optuna', 'torch') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )


def test_the_cli_and_sweep_files_import_neither_ray_nor_torch():
    # The runner (Ray, torch) is imported only to run a sweep: --dry-run, bad input and
    # `report --sweep` load a sweep file in a second, not in five.
    _run_python(
        "import sys, orchestrator.run, orchestrator.spec; "
        "bad = [m for m in ('ray', 'torch') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )


def test_the_results_lock_imports_no_optuna():
    # The S3 lease shares conditional writes with the S3 Optuna journal, not the journal's Optuna.
    _run_python(
        "import sys, orchestrator.guard; print('optuna' in sys.modules); sys.exit('optuna' in sys.modules)"
    )


def test_every_sparsity_core_module_imports_alone():
    # Each module imported first into a fresh, empty package (its __init__ not run): an import cycle
    # cannot hide behind the order in which __init__ happens to import the modules.
    _run_python(
        "import importlib, pkgutil, sys, types\n"
        "import sparsity_core\n"
        "path = list(sparsity_core.__path__)\n"
        "for info in pkgutil.iter_modules(path):\n"
        "    for key in [k for k in sys.modules if k.split('.')[0] == 'sparsity_core']:\n"
        "        del sys.modules[key]\n"
        "    package = types.ModuleType('sparsity_core')\n"
        "    package.__path__ = path\n"
        "    sys.modules['sparsity_core'] = package\n"
        "    importlib.import_module('sparsity_core.' + info.name)\n"
    )


def test_importing_the_runner_changes_no_environment_variable():
    # The libraries first: some set variables of their own on import (ray, polars, torch._dynamo).
    _run_python(
        "import os, sys, polars, pyarrow, optuna, ray, ray.tune, sparsity_core; "
        "before = dict(os.environ); import orchestrator.runner, orchestrator.run; "
        "changed = sorted(k for k in {*before, *os.environ} if before.get(k) != os.environ.get(k)); "
        "print(changed); sys.exit(1 if changed else 0)"
    )


def _imports_sparsity_core(node: ast.AST) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] == "sparsity_core"
    return isinstance(node, ast.Import) and any(a.name.split(".")[0] == "sparsity_core" for a in node.names)


def test_sparsity_core_imports_its_own_modules_at_the_top_only():
    # A module importing another inside a function is how a cycle is dodged rather than removed.
    for source in Path(sparsity_core.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if _imports_sparsity_core(inner):
                        pytest.fail(f"{source.name}:{inner.lineno} imports sparsity_core inside {node.name}()")
