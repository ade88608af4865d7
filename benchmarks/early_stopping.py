"""What multi-objective early stopping saves and costs: quick_pareto against quick_pareto_asha.

Both sweep files search the same space with the same trials, data and schedule; quick_pareto_asha
adds `early_stopping:`. Each runs with `--trials` trials for each search seed in `--seeds`
(`optuna.seed=K`), the two sweeps taking turns (so bursts of load from other processes fall on
both), each run into its own results folder (`<out>/<sweep>-seed<K>/`, its study in SQLite there),
through `orchestrator.runner.run_sweep` on one local Ray started once (its start-up is not timed).

Per run and summed per sweep:
- `epochs`: epochs trained, summed over trials (rows of the epochs table);
- `hypervolume`: of the final front, over the trials that ran to the end (stopped trials' values
  are a rung's), in the plane (dead_gamma_pct, maximised; test_err, minimised), both in percent,
  against the fixed reference point (dead_gamma_pct -1 %, test_err 100 %): 100 % error is the worst
  possible, and -1 % one point below the worst sparsity, so that a trial without dead filters still
  adds area by its error; fixed, so runs compare on one scale (at most 101 x 100 = 10,100);
- `wall_s`: seconds of `run_sweep`.
And for each quick_pareto run, the offline replay of quick_pareto_asha's settings on it (what they
would have saved and lost there; `report.py --replay-early-stopping`'s JSON).

`--trials N --epochs E [--dataset synthetic]` make a small run: the LR step and the rungs are
scaled from the sweep files' epochs to E (kept within 1..E-1). A quick check that the script works
(about two minutes on 2 cores, mostly Ray starting the trials):

    python benchmarks/early_stopping.py --trials 2 --epochs 4 --dataset synthetic --seeds 0

The full comparison (8 trials x 150 epochs x 2 sweeps x 3 seeds; about 30 minutes on 2 cores):

    python benchmarks/early_stopping.py

Everything but the final JSON line goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

# Optuna's hypervolume is private in Optuna 5 (`optuna._hypervolume`); the only public way to it is
# `optuna.visualization.plot_hypervolume_history`, which draws a study's history instead of
# returning the number, and no other installed package has one.
from optuna._hypervolume import compute_hypervolume

from orchestrator import report
from orchestrator.pareto import non_dominated_ranks, to_costs
from orchestrator.results import load_results
from orchestrator.runner import connect, run_sweep
from orchestrator.spec import Sweep, load_spec
from orchestrator.store import COMPLETED, ResultStore

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = ("quick_pareto", "quick_pareto_asha")
OBJECTIVES = {"dead_gamma_pct": "max", "test_err": "min"}
REFERENCE = {"dead_gamma_pct": -1.0, "test_err": 100.0}  # percent; see the module docstring


def _scaled(epochs: list[int], base: int, target: int) -> list[int]:
    """Epoch numbers of a `base`-epoch schedule moved to `target` epochs, each within 1..target-1."""
    return sorted({min(target - 1, max(1, round(e * target / base))) for e in epochs})


def overrides(name: str, seed: int, trials: int | None, epochs: int | None, dataset: str | None) -> list[str]:
    """The `--set`s of one run."""
    sets = [f"optuna.seed={seed}"]
    if trials is not None:
        sets.append(f"optuna.n_trials={trials}")
    if dataset is not None:
        sets.append(f"dataset.name={dataset}")
    if epochs is not None:
        spec = load_spec(ROOT / "sweeps" / f"{name}.yaml").spec
        base = spec.train["epochs"]
        sets += [f"train.epochs={epochs}", f"train.lr_steps={_scaled(spec.train['lr_steps'], base, epochs)}"]
        if spec.early_stopping is not None and spec.early_stopping.rungs is not None:
            sets.append(f"early_stopping.rungs={_scaled(spec.early_stopping.rungs, base, epochs)}")
    return sets


def hypervolume(trials) -> tuple[float, int]:
    """Hypervolume of the completed trials' front (see the module docstring), and its size."""
    done = trials.filter(trials["status"].is_in(list(COMPLETED)))
    costs = to_costs(done.select(list(OBJECTIVES)).to_numpy(), list(OBJECTIVES.values()))
    costs = costs[~np.isnan(costs).any(axis=1)]
    reference = to_costs([list(REFERENCE.values())], list(OBJECTIVES.values()))[0]
    if not len(costs):
        return 0.0, 0
    return float(compute_hypervolume(costs, reference)), int((non_dominated_ranks(costs) == 0).sum())


def run_one(sweep: Sweep, folder: Path) -> dict:
    store = ResultStore(str(folder), sweep.spec.name)
    start = time.perf_counter()
    summary = run_sweep(sweep, store)
    wall = time.perf_counter() - start
    tables = load_results(store.path)
    volume, front = hypervolume(tables.trials)
    statuses = tables.trials["status"].value_counts().rows()
    epochs = tables.epochs.select(pl.len()).collect().item()
    return {"sweep": sweep.spec.name, "trials": tables.trials.height, "statuses": dict(statuses),
            "failed": len(summary.failed), "epochs": epochs, "hypervolume": volume,
            "front_size": front, "wall_s": round(wall, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=None, help="trials per run (default: the sweep files' n_trials)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: the sweep files')")
    p.add_argument("--dataset", default=None, help="dataset name instead of the sweep files' (e.g. synthetic)")
    p.add_argument("--seeds", default="0,1,2", help="search seeds, comma-separated (default: 0,1,2)")
    p.add_argument("--out", default=None, help="results folder (default: a temporary one, removed at the end)")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]

    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        connect(None)
        runs = []
        for seed in seeds:
            for name in SWEEPS:
                sweep = load_spec(ROOT / "sweeps" / f"{name}.yaml",
                                  overrides(name, seed, args.trials, args.epochs, args.dataset))
                folder = out / f"{name}-seed{seed}"
                run = {**run_one(sweep, folder), "seed": seed}
                if name == "quick_pareto":
                    asha = load_spec(ROOT / "sweeps" / "quick_pareto_asha.yaml",
                                     overrides("quick_pareto_asha", seed, args.trials, args.epochs, args.dataset))
                    tables = load_results(folder / name)
                    try:
                        run["replay"] = json.loads(report.replay_early_stopping(tables, asha.spec).to_json())
                    except report.ReportError as e:
                        run["replay"] = {"error": str(e)}
                print(json.dumps(run), file=sys.stderr)
                runs.append(run)
    totals = {}
    for name in SWEEPS:
        mine = [r for r in runs if r["sweep"] == name]
        totals[name] = {"epochs": sum(r["epochs"] for r in mine), "wall_s": round(sum(r["wall_s"] for r in mine), 1),
                        "hypervolume_mean": float(np.mean([r["hypervolume"] for r in mine])),
                        "trials": sum(r["trials"] for r in mine), "failed": sum(r["failed"] for r in mine)}
    plain, asha = totals["quick_pareto"], totals["quick_pareto_asha"]
    print(json.dumps({
        "reference_point": REFERENCE,
        "seeds": seeds, "trials": args.trials, "epochs": args.epochs, "dataset": args.dataset,
        "epochs_saved_pct": 100.0 * (1 - asha["epochs"] / plain["epochs"]) if plain["epochs"] else None,
        "wall_saved_pct": 100.0 * (1 - asha["wall_s"] / plain["wall_s"]) if plain["wall_s"] else None,
        "totals": totals,
        "runs": runs,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
