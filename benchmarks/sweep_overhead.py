"""What the orchestrator costs per trial: 16 one-step trials through Ray Tune vs a plain loop.

The trials are tiny on purpose (synthetic data, BasicNet width 1/8, one epoch of one step:
batch size = n_train), so their time is almost all fixed cost. The same 16 `TrialConfig`s (from
a sweep file written to a temporary folder, through `load_spec`) run twice:
- plain: `sparsity_core.loop.train` in this process, one after the other, at one torch thread
  (what a Tune trial with `resources.cpu: 1` gets), after one untimed warm-up trial;
- orchestrated: `orchestrator.runner.run_sweep` on a real local Ray (`connect(None)`), results in
  a temporary Parquet store. Ray's start-up is timed separately and left out of the overhead.
`overhead_per_trial_s` = (orchestrated - plain) / 16. Note that Tune runs as many trials at once
as the cores allow (2 on 2 cores) while the plain loop runs one at a time; `--max-concurrent 1`
gives the like-for-like sequential comparison.

Everything but the final JSON line goes to stderr. About a minute on 2 cores.

    python benchmarks/sweep_overhead.py [--trials 16] [--max-concurrent N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ray
import torch
import yaml

from orchestrator.runner import connect, run_sweep
from orchestrator.spec import Sweep, load_spec
from orchestrator.store import ResultStore
from sparsity_core import TrialConfig, train

N_TRAIN = 32  # images; batch size = N_TRAIN, so one epoch is one step
N_TEST = 32


def sweep_file(folder: Path, trials: int, max_concurrent: int | None) -> Path:
    """A sweep of `trials` one-step trials that differ only in their seed."""
    spec = {
        "name": "overhead",
        "dataset": {"name": "synthetic", "n_train": N_TRAIN, "n_test": N_TEST},
        "model": {"name": "basicnet", "width": 0.125},
        "train": {"epochs": 1, "batch_size": N_TRAIN},
        "device": "cpu",
        "seeds": list(range(trials)),
        "resources": {"cpu": 1, "max_concurrent": max_concurrent},
        "retries": 0,
    }
    path = folder / "overhead.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def plain_loop(trials: list[TrialConfig]) -> float:
    """Seconds to train every trial in this process, one after the other."""
    train(trials[0])  # warm-up: first-call costs of torch's kernels stay out of the timing
    start = time.perf_counter()
    for cfg in trials:
        result = train(cfg)
        if result.status != "ok":
            raise RuntimeError(f"plain trial {cfg.trial_id} ended {result.status}: {result.message}")
    return time.perf_counter() - start


def orchestrated(sweep: Sweep, results: Path) -> float:
    """Seconds for `run_sweep` to run every trial on the already started Ray."""
    store = ResultStore(str(results), sweep.spec.name)
    start = time.perf_counter()
    summary = run_sweep(sweep, store)
    seconds = time.perf_counter() - start
    if set(summary.statuses.values()) != {"ok"} or len(summary.statuses) != len(sweep.trials):
        raise RuntimeError(f"orchestrated trials did not all finish ok: {summary.statuses}")
    return seconds


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send file descriptor 1 to stderr: Ray's worker logs are printed to the stdout the process
    started with, which must carry only the JSON."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--max-concurrent", type=int, default=None,
                        help="trials Tune runs at once (default: as many as the cores allow)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp, stdout_to_stderr():
        sweep = load_spec(sweep_file(Path(tmp), args.trials, args.max_concurrent))
        spec, trials = sweep.spec, list(sweep.trials)
        plain_s = plain_loop(trials)
        start = time.perf_counter()
        connect(None)
        startup_s = time.perf_counter() - start
        cpus = int(ray.cluster_resources()["CPU"])
        orchestrated_s = orchestrated(sweep, Path(tmp) / "results")
        ray.shutdown()
    concurrent = min(args.max_concurrent or cpus, cpus // int(spec.resources.cpu))
    result = {
        "trials": len(trials),
        "plain_s": round(plain_s, 2),
        "orchestrated_s": round(orchestrated_s, 2),
        "ray_startup_s": round(startup_s, 2),
        "overhead_per_trial_s": round((orchestrated_s - plain_s) / len(trials), 3),
        "plain_per_trial_s": round(plain_s / len(trials), 3),
        "orchestrated_per_trial_s": round(orchestrated_s / len(trials), 3),
        "ray_cpus": cpus,
        "max_concurrent": concurrent,
        "threads_per_trial": 1,
        "n_train": N_TRAIN,
        "torch": torch.__version__,
        "ray": ray.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
