"""Run a sweep file: `python orchestrator/run.py sweeps/quick.yaml [--set KEY=VALUE ...]`.

Without an address this starts an embedded local Ray; with `--address` or $RAY_ADDRESS (which
`ray job submit` sets) it joins that cluster. Re-running the same command resumes: finished trials
are skipped, and a trial another sweep under the same results root finished is copied, not trained.
Before anything is written: the cluster can reach the results, and every node that runs trials
has their data. Exit codes: 0 every trial ok, diverged or stopped (by `early_stopping:`), 1 some
failed (or the results' lock was lost), 2 bad input (nothing ran, nothing written).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.guard import (  # noqa: E402
    RESULTS_ENV,
    GuardError,
    SweepLock,
    check_device,
    check_reachable,
    check_results_shared,
    check_writable,
    lease_seconds,
)
from orchestrator.spec import SpecError, describe, load_spec  # noqa: E402
from sparsity_core.config import DatasetError  # noqa: E402

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orchestrator/run.py", description=__doc__.splitlines()[0])
    p.add_argument("sweep", help="sweep YAML file, e.g. sweeps/quick.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting by dotted key, e.g. --set train.epochs=2 --set seeds=[0]")
    p.add_argument("--dry-run", action="store_true", help="print the expanded trials and run nothing")
    p.add_argument("--results", default=os.environ.get(RESULTS_ENV, "results"),
                   help=f"results root, a folder or URI (default: ${RESULTS_ENV} if set, else results/)")
    p.add_argument("--results-shared", action="store_true",
                   help="the results folder is a shared filesystem, mounted at the same path on every node "
                        "(lets a cluster of several nodes checkpoint into it)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else local)")
    p.add_argument("--force", action="store_true", help="re-run trials that already finished")
    p.add_argument("--tune-progress", action="store_true", help="also show Ray Tune's own progress table")
    return p


def _log_to_console() -> None:
    """The orchestrator's lines go to the console as they are, one per line: progress (logged at
    INFO) to stdout, warnings and errors (a lost lock) to stderr."""
    logger = logging.getLogger("orchestrator")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not logger.handlers:
        progress, problems = logging.StreamHandler(sys.stdout), logging.StreamHandler(sys.stderr)
        progress.addFilter(lambda record: record.levelno < logging.WARNING)
        problems.setLevel(logging.WARNING)
        for handler in (progress, problems):
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        sweep = load_spec(args.sweep, args.overrides)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    spec, trials = sweep.spec, sweep.trials

    if args.dry_run:
        if spec.optuna is not None:
            print(f"search {spec.name!r}: {spec.optuna.n_trials} Optuna trials from base {trials[0].trial_id}, over")
            for alias, param in spec.optuna.space.items():
                print(f"  {alias}: {param.model_dump(exclude_none=True)}")
            return 0
        print(f"sweep {spec.name!r}: {len(trials)} trials")
        print("\n".join(describe(trials)))
        return 0

    from orchestrator.runner import connect, run_sweep
    from orchestrator.staging import stage_datasets, trial_nodes
    from orchestrator.store import ResultStore

    store = ResultStore(args.results, spec.name)
    try:
        check_device(spec.device, args.address or os.environ.get("RAY_ADDRESS"))
        check_reachable(args.address or os.environ.get("RAY_ADDRESS"))
        lock = SweepLock(store, lease_s=lease_seconds())
        connect(args.address)
        _log_to_console()
        # Each alive node (a trial of 0 CPUs fits anywhere) may run trials away from this driver's disk.
        check_results_shared(store, len(trial_nodes()), spec.checkpoint_every, args.results_shared)
        staged = stage_datasets({t.dataset for t in trials}, cpu=spec.resources.cpu, gpu=spec.resources.gpu)
        if staged:
            roots = sorted({t.dataset.root for t in trials if t.dataset.root})
            print(f"data ready on {len(staged)} nodes: {', '.join(roots)}")
        check_writable(store)
        with lock:
            summary = run_sweep(sweep, store, force=args.force, tune_progress=args.tune_progress,
                                still_locked=lambda: not lock.lost)
    except (GuardError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(summary.lines()))
    for trial_id in summary.failed:
        print(f"failed: {trial_id}", file=sys.stderr)
    print(f"results in {store.uri}")
    print(f"report: python orchestrator/report.py {shlex.quote(store.uri)}")
    return 1 if summary.failed or lock.lost else 0


if __name__ == "__main__":
    sys.exit(main())
