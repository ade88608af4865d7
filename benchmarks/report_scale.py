"""What a report costs at paper scale: a synthetic sweep written through the store, then
`orchestrator.report.build_report` timed in a fresh Python process.

The sweep: N full-width BasicNet trials (1856 filters in C1..C7) on CIFAR-10's settings, each run
for E epochs, with per-epoch rows (`epochs`), per-epoch per-layer rows (`layers`) and two per-filter
snapshots (`filters`: half-way and at the end, activations measured at the end), as the trainer
writes them with `snapshot_every = ceil(E / 2)`. Each trial is a real `TrialConfig` (40
configurations: 5 optimizers x L2/WD x 4 strengths, seeds counting up), written with
`ResultStore.write`, the store's own writer. The numbers are made up but shaped like real ones
(adaptive optimizers lose more filters, late layers most).

The report runs in a child process started fresh (imports included, as a user meets it); its wall
time and peak resident memory (`os.wait4`'s rusage of that child alone) are measured here. Only
`ResultStore.write` and `report.build_report(sweep_dir, out)` are used, so the same script measures
any version of the code: put that version first on PYTHONPATH.

    PYTHONPATH=. python benchmarks/report_scale.py [--trials 1000] [--epochs 325] [--store DIR] [--report DIR]

`--store DIR` keeps the generated sweep in DIR and reuses it on the next run with the same N and E
(writing 1000 x 325 takes 10-20 s on 2 cores); by default it goes to a temporary folder, removed at the
end. Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.store import TABLES, ResultStore
from sparsity_core.config import TrialConfig

SWEEP = "scale"
LAYERS = {"C1": 64, "C2": 128, "C3": 128, "C4": 256, "C5": 256, "C6": 512, "C7": 512}  # BasicNet, width 1
OPTIMIZERS = {"adam": 0.8, "rmsprop": 0.7, "adamax": 0.6, "amsgrad": 0.3, "sgd": 0.05}  # how sparse each gets
REGS = ("l2", "wd")
STRENGTHS = (1e-3, 1e-4, 1e-5, 1e-6)
LAYER_SHARE = np.array([0.5, 0.5, 0.4, 0.7, 0.75, 0.95, 0.98])  # late layers lose the most filters

_CHILD = """
import json, sys, time
from pathlib import Path
from orchestrator import report
start = time.perf_counter()
report.build_report(sys.argv[1], sys.argv[2])
build_s = time.perf_counter() - start
print(json.dumps({"build_s": build_s, "code": str(Path(report.__file__).resolve().parent.parent)}))
"""


def trial_config(i: int, epochs: int) -> TrialConfig:
    """The i-th trial: configurations cycle, the seed counts how often one came round."""
    n_configs = len(OPTIMIZERS) * len(REGS) * len(STRENGTHS)
    k = i % n_configs
    optimizer = list(OPTIMIZERS)[k // (len(REGS) * len(STRENGTHS))]
    reg = REGS[(k // len(STRENGTHS)) % len(REGS)]
    strength = STRENGTHS[k % len(STRENGTHS)]
    return TrialConfig.model_validate({
        "dataset": {"name": "cifar10", "root": "/data/cifar10"},
        "model": {"name": "basicnet", "width": 1.0},
        "train": {"optimizer": optimizer, "reg": reg, "strength": strength, "epochs": epochs,
                  "lr_steps": [max(1, round(epochs * 250 / 325))], "snapshot_every": math.ceil(epochs / 2)},
        "seed": i // n_configs,
        "device": "cuda",
    })


def _empty(table: str) -> dict[str, None]:
    """Every column of `table` as None: the store takes whole rows only; a row sets what it has."""
    return dict.fromkeys(TABLES[table].names)


def write_trial(store: ResultStore, i: int, epochs: int) -> None:
    cfg = trial_config(i, epochs)
    tid, t = cfg.trial_id, cfg.train
    rng = np.random.default_rng(i)
    # final share of each layer's filters dead: optimizer x strength x layer, with seed noise
    sparsity = OPTIMIZERS[t.optimizer] * (1 + math.log10(t.strength) / 7) * (0.5 if t.reg == "wd" else 1.0)
    final_share = np.clip(sparsity * LAYER_SHARE + rng.normal(0, 0.03, len(LAYERS)), 0, 1)
    sizes = np.array(list(LAYERS.values()))
    n_total = int(sizes.sum())
    e = np.arange(1, epochs + 1)
    ramp = 1 - np.exp(-e / 40)  # filters die early in training
    dead = np.rint(final_share[None, :] * sizes[None, :] * ramp[:, None]).astype(int)  # [epoch, layer]
    dead_act = np.minimum(sizes, dead[-1] + rng.integers(0, 5, len(LAYERS)))
    test_err = 9 + 20 * sparsity + 40 * np.exp(-e / 30) + rng.normal(0, 0.3, epochs)
    train_loss = 0.02 + 2 * np.exp(-e / 25)
    lr = np.where(e > t.lr_steps[0], 1e-4, 1e-3)

    store.write("epochs", tid, [
        {**_empty("epochs"), "trial_id": tid, "epoch": ep, "lr": r, "train_loss": tl, "test_loss": tl * 1.5,
         "test_err": te, "dead_gamma_pct": 100.0 * d / n_total,
         "dead_act_pct": 100.0 * int(dead_act.sum()) / n_total if ep == epochs else None}
        for ep, r, tl, te, d in zip(e.tolist(), lr.tolist(), train_loss.tolist(), test_err.tolist(),
                                    dead.sum(axis=1).tolist())
    ])
    names = list(LAYERS)
    store.write("layers", tid, [
        {**_empty("layers"), "trial_id": tid, "epoch": ep, "layer": name, "n_filters": n, "dead_gamma": d,
         "dead_act": int(dead_act[j]) if ep == epochs else None}
        for ep, row in zip(e.tolist(), dead.tolist()) for j, (name, n, d) in enumerate(zip(names, sizes.tolist(), row))
    ])
    filters: list[dict[str, Any]] = []
    layer_of = np.repeat(names, sizes).tolist()
    index = np.concatenate([np.arange(n) for n in sizes]).tolist()
    for snap in sorted({t.snapshot_every, epochs}):
        is_dead = np.concatenate([np.arange(n) < dead[snap - 1, j] for j, n in enumerate(sizes)])
        gamma = np.where(is_dead, rng.normal(0, 1e-4, n_total), rng.normal(0.6, 0.25, n_total)).tolist()
        beta = (rng.normal(-0.1, 0.2, n_total) - 0.3 * is_dead).tolist()
        if snap == epochs:
            max_act = np.where(is_dead, 0.0, rng.gamma(2.0, 1.0, n_total)).tolist()
            universality = np.where(is_dead, 0.0, rng.beta(2.0, 3.0, n_total)).tolist()
        else:
            max_act = universality = [None] * n_total
        filters += [{**_empty("filters"), "trial_id": tid, "epoch": snap, "layer": name, "filter": f, "gamma": g,
                     "beta": b, "max_act": m, "universality": u}
                    for name, f, g, b, m, u in zip(layer_of, index, gamma, beta, max_act, universality)]
    store.write("filters", tid, filters)
    dead_pct = 100.0 * int(dead[-1].sum()) / n_total
    store.write("trials", tid, [{
        **_empty("trials"),
        "trial_id": tid, "sweep": SWEEP, "status": "ok", **cfg.flat(), "epochs_run": epochs,
        "train_loss": float(train_loss[-1]), "test_loss": float(train_loss[-1] * 1.5),
        "test_err": float(test_err[-1]), "dead_gamma_pct": dead_pct,
        "dead_act_pct": 100.0 * int(dead_act.sum()) / n_total,
        "pruned_test_err": float(test_err[-1]), "conv_params_pruned_pct": dead_pct * 1.2,
        "flops_pruned_pct": dead_pct * 0.9, "pruned_speedup": 1 + dead_pct / 30, "pruned_by": "dead_gamma",
        "filters_removed_pct": dead_pct, "trained_test_err": float(test_err[-1]),
        "unfinetuned_test_err": float(test_err[-1]), "finetuned": False,
        "wall_time_s": 3600.0, "code_version": "0.1.0+synthetic", "error": "",
        "finished_at": datetime.datetime(2026, 11, 22, tzinfo=datetime.timezone.utc),
        "config_json": cfg.model_dump_json(),
    }])


def prepare_store(root: Path, trials: int, epochs: int) -> Path:
    """`root/scale`, written unless `root` already holds this benchmark's sweep of the same size."""
    marker = root / "report_scale.json"
    wanted = {"trials": trials, "epochs": epochs}
    sweep_dir = root / SWEEP
    if marker.exists():
        if json.loads(marker.read_text()) != wanted:
            sys.exit(f"error: {root} holds a sweep of {marker.read_text()}, not {wanted}; "
                     "pass another --store or remove that folder")
        print(f"reusing {sweep_dir}", file=sys.stderr)
        return sweep_dir
    if sweep_dir.exists():
        sys.exit(f"error: {sweep_dir} exists but was not written by this benchmark; pass another --store")
    store = ResultStore(str(root), SWEEP)
    start = time.perf_counter()
    for i in range(trials):
        write_trial(store, i, epochs)
        if (i + 1) % 50 == 0 or i + 1 == trials:
            print(f"wrote {i + 1}/{trials} trials ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    marker.write_text(json.dumps(wanted))
    return sweep_dir


def time_report(sweep_dir: Path, out: Path) -> dict[str, Any]:
    """Run the report in a fresh interpreter; wall seconds, its own peak RSS, its output's size."""
    start = time.perf_counter()
    # -P: the code comes from PYTHONPATH, not from the folder the benchmark is started in
    child = subprocess.Popen([sys.executable, "-P", "-c", _CHILD, str(sweep_dir), str(out)],
                             stdout=subprocess.PIPE, text=True)
    stdout = child.stdout.read()  # the child prints one short line: no pipe can fill up
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        sys.exit(f"error: the report failed (exit code {child.returncode}); its error is above")
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
    reported = json.loads(stdout.strip().splitlines()[-1])
    return {
        "wall_s": round(wall, 2),
        "build_s": round(reported["build_s"], 2),
        # CPU seconds of the child (user + system): on a shared machine, what the report itself cost
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # ru_maxrss is in KiB on Linux
        "report_bytes": sum(files.values()),
        "report_files": files,
        "code": reported["code"],  # the checkout the report ran from
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=325)
    p.add_argument("--store", type=Path, default=None, help="keep (and reuse) the generated sweep here")
    p.add_argument("--report", type=Path, default=None, help="keep the report here (default: a temp folder)")
    args = p.parse_args()
    if args.trials <= 0 or args.epochs <= 0:
        sys.exit("error: --trials and --epochs must be positive")
    with tempfile.TemporaryDirectory(prefix="report_scale-") as tmp:
        sweep_dir = prepare_store(args.store or Path(tmp) / "store", args.trials, args.epochs)
        out = args.report or Path(tmp) / "report"
        if out.exists():
            shutil.rmtree(out)
        measured = time_report(sweep_dir, out)
        result = {**measured, "trials": args.trials, "epochs": args.epochs,
                  "store_bytes": sum(f.stat().st_size for f in sweep_dir.rglob("*.parquet")), "cpus": os.cpu_count()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
