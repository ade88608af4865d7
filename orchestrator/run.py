"""Run a sweep file: `python orchestrator/run.py sweeps/quick.yaml [--set KEY=VALUE ...]`.

Without an address this starts an embedded local Ray; with `--address` or $RAY_ADDRESS (which
`ray job submit` sets) it joins that cluster. Re-running the same command resumes: finished trials
are skipped. Exit codes: 0 all trials ok or diverged, 1 some failed, 2 bad input (nothing ran).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.guard import GuardError, SweepLock, check_device, check_reachable, check_writable  # noqa: E402
from orchestrator.spec import SpecError, load_spec  # noqa: E402
from sparsity_core.data import DatasetError, check_dataset  # noqa: E402

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orchestrator/run.py", description=__doc__.splitlines()[0])
    p.add_argument("sweep", help="sweep YAML file, e.g. sweeps/quick.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting by dotted key, e.g. --set train.epochs=2 --set seeds=[0]")
    p.add_argument("--dry-run", action="store_true", help="print the expanded trials and run nothing")
    p.add_argument("--results", default="results", help="results root, a folder or URI (default: results/)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else local)")
    p.add_argument("--force", action="store_true", help="re-run trials that already finished")
    p.add_argument("--tune-progress", action="store_true", help="also show Ray Tune's own progress table")
    return p


def _progress_to_stdout() -> None:
    """The orchestrator's progress lines (logged at INFO) go to stdout as they are, one per line."""
    logger = logging.getLogger("orchestrator")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        sweep = load_spec(args.sweep, args.overrides)
        for dataset in {t.dataset for t in sweep.trials}:
            check_dataset(dataset)
    except (SpecError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    spec, trials = sweep.spec, sweep.trials

    if args.dry_run:
        from orchestrator.runner import describe

        if spec.optuna is not None:
            print(f"search {spec.name!r}: {spec.optuna.n_trials} Optuna trials from base {trials[0].trial_id}, over")
            for alias, param in spec.optuna.space.items():
                print(f"  {alias}: {param.model_dump(exclude_none=True)}")
            return 0
        print(f"sweep {spec.name!r}: {len(trials)} trials")
        print("\n".join(describe(trials)))
        return 0

    from orchestrator.runner import connect, run_sweep
    from orchestrator.store import ResultStore

    store = ResultStore(args.results, spec.name)
    try:
        check_device(spec.device, args.address or os.environ.get("RAY_ADDRESS"))
        check_reachable(args.address or os.environ.get("RAY_ADDRESS"))
        check_writable(store)
        with SweepLock(store):
            connect(args.address)
            _progress_to_stdout()
            summary = run_sweep(sweep, store, force=args.force, tune_progress=args.tune_progress)
    except GuardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(summary.lines()))
    for trial_id in summary.failed:
        print(f"failed: {trial_id}", file=sys.stderr)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
