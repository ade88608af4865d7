"""GPU smoke check: short trials solo and packed, fp32 and bf16, captured as CUDA graphs and eager.

    python benchmarks/gpu_check.py [--width 1.0] [--pack 4] [--images 2048] [--epochs 2]

For each precision, on CIFAR-shaped synthetic data (no download) with BasicNet at `--width`, batch
40 and an LR step after the first epoch (so a captured step must see the schedule change):
- SGD with momentum and weight decay: a solo trial eager and captured (`train.cuda_graph`), a pack
  of `--pack` trials eager and captured; every run ends ok with finite losses, and the captured runs
  agree with the eager ones (final training loss within 1e-3 relative in fp32, 5e-2 in bf16), the
  captured solo trial with the captured pack's trial 0 too;
- Adam with L2 (capturable Adam's step counter on the device): the pack eager and captured, the
  same checks at 2e-2 / 5e-2 (Adam's first steps turn kernel rounding into whole steps).
Then the pack-size probe of `pack: auto` (sparsity_core.capacity) on the bf16 configuration.
Each line gives the run's own wall time. Exits 1 when any check fails (each one printed), else 0;
on a machine without a CUDA GPU it says so and exits 0 having checked nothing. The last line of
stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from collections.abc import Callable

import torch

from sparsity_core import TrialConfig, train, train_packed
from sparsity_core.capacity import probe_packs
from sparsity_core.loop import TrialResult

TOLERANCE = {"sgd": {"fp32": 1e-3, "bf16": 5e-2}, "adam": {"fp32": 2e-2, "bf16": 5e-2}}


def config(args: argparse.Namespace, seed: int, optimizer: str, precision: str, cuda_graph: bool) -> TrialConfig:
    settings = {"optimizer": "sgd", "lr": 0.02, "reg": "wd", "strength": 1e-3} if optimizer == "sgd" else \
        {"optimizer": "adam", "reg": "l2", "strength": 1e-4}
    return TrialConfig.model_validate({
        "dataset": {"name": "synthetic", "n_train": args.images, "n_test": 256, "image_size": 32},
        "model": {"name": "basicnet", "width": args.width},
        "train": {**settings, "batch_size": 40, "epochs": args.epochs, "lr_steps": [1], "precision": precision,
                  "cuda_graph": cuda_graph},
        "seed": seed, "device": "cuda",
    })


class Checks:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def run(self, name: str, precision: str, work: Callable[[], list[TrialResult]]) -> list[TrialResult] | None:
        """`work`'s results, timed; a failure to finish, or a trial not ok or with a non-finite
        loss, is recorded."""
        start = time.perf_counter()
        try:
            results = work()
            error = next((f"trial {i}: {r.status} {r.message}" for i, r in enumerate(results)
                          if r.status != "ok" or not all(math.isfinite(m.train_loss) for m in r.history)), None)
        except Exception:  # a smoke check reports every failure and goes on
            results, error = None, traceback.format_exc(limit=4).strip().splitlines()[-1]
        wall_s = time.perf_counter() - start
        loss = None if results is None else [r.final.train_loss for r in results]
        self.rows.append({"check": name, "precision": precision, "ok": error is None, "wall_s": round(wall_s, 2),
                          "train_loss": loss, "error": error})
        print(f"{'ok  ' if error is None else 'FAIL'} {precision} {name:<22} {wall_s:7.1f} s"
              f"  train_loss {loss}" + (f"  {error}" if error else ""), flush=True)
        return None if error else results

    def agree(self, name: str, precision: str, got: list[TrialResult] | None, want: list[TrialResult] | None,
              rel: float) -> None:
        if got is None or want is None:
            return
        pairs = [(a.final.train_loss, b.final.train_loss) for a, b in zip(got, want)]
        worst = max(abs(a - b) / abs(b) for a, b in pairs)
        error = None if worst <= rel else f"relative difference {worst:.2e} > {rel:g}"
        self.rows.append({"check": name, "precision": precision, "ok": error is None, "worst_rel": worst,
                          "error": error})
        print(f"{'ok  ' if error is None else 'FAIL'} {precision} {name:<22} worst relative difference "
              f"{worst:.2e} (at most {rel:g})", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--pack", type=int, default=4)
    parser.add_argument("--images", type=int, default=2048, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(f"no CUDA GPU here (torch {torch.__version__}, CUDA build {torch.version.cuda}, "
              "torch.cuda.is_available() is False): nothing was checked", flush=True)
        print(json.dumps({"cuda": False, "checks": [], "failures": 0, "torch": torch.__version__}))
        return 0

    checks = Checks()
    for precision in ("fp32", "bf16"):
        def cfgs(optimizer: str, graph: bool, n: int = args.pack, precision: str = precision) -> list[TrialConfig]:
            return [config(args, seed, optimizer, precision, graph) for seed in range(n)]

        tol = TOLERANCE["sgd"][precision]
        solo_eager = checks.run("sgd solo eager", precision, lambda: [train(cfgs("sgd", False, 1)[0])])
        solo = checks.run("sgd solo captured", precision, lambda: [train(cfgs("sgd", True, 1)[0])])
        pack_eager = checks.run("sgd pack eager", precision, lambda: train_packed(cfgs("sgd", False)))
        pack = checks.run("sgd pack captured", precision, lambda: train_packed(cfgs("sgd", True)))
        checks.agree("sgd solo vs eager", precision, solo, solo_eager, tol)
        checks.agree("sgd pack vs eager", precision, pack, pack_eager, tol)
        checks.agree("sgd solo vs pack", precision, solo, None if pack is None else pack[:1], tol)
        adam_eager = checks.run("adam pack eager", precision, lambda: train_packed(cfgs("adam", False)))
        adam = checks.run("adam pack captured", precision, lambda: train_packed(cfgs("adam", True)))
        checks.agree("adam pack vs eager", precision, adam, adam_eager, TOLERANCE["adam"][precision])

    probe = None
    start = time.perf_counter()
    try:
        found = probe_packs([config(args, seed, "adam", "bf16", True) for seed in range(32)], largest=32)
        probe = {"best": found.best(), "largest_fit": found.largest_fit(), "describe": found.describe(),
                 "wall_s": round(time.perf_counter() - start, 2)}
        print(f"ok   bf16 pack probe {probe['wall_s']:.1f} s: best {probe['best']}, largest that fits "
              f"{probe['largest_fit']} ({probe['describe']})", flush=True)
    except Exception:
        error = traceback.format_exc(limit=4).strip().splitlines()[-1]
        checks.rows.append({"check": "pack probe", "precision": "bf16", "ok": False, "error": error})
        print(f"FAIL bf16 pack probe: {error}", flush=True)
    failures = sum(not row["ok"] for row in checks.rows)
    print(json.dumps({"cuda": True, "device_name": torch.cuda.get_device_name(), "width": args.width,
                      "pack": args.pack, "images": args.images, "epochs": args.epochs, "checks": checks.rows,
                      "probe": probe, "failures": failures, "torch": torch.__version__}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
