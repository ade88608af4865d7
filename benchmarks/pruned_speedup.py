"""Inference latency of BasicNet pruned to the paper's layer-wise dead-filter profile vs the full net.

The profile is supplementary Table 1's row for Adam, L2 1e-3, CIFAR-10 (percent of C1..C7 filters
dead). Width-1 BasicNet, 3x32x32 inputs, 10 classes; the first filters of each layer removed with
`remove_filters` (which ones does not matter for timing: the net is untrained and only the shapes
count). Eval mode, inference mode, `--warmup` untimed forwards then the median of `--repeats` timed
ones, at batch 1 and 256.
Prints one JSON line. The CPU default takes about a minute on 2 cores.

    python benchmarks/pruned_speedup.py [--device cuda] [--profile-csv PATH]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import torch

from sparsity_core.models import BasicNet, conv_blocks
from sparsity_core.prune import conv_weight_count, count_flops, inference_latency, remove_filters

ROOT = Path(__file__).resolve().parents[1]
PROFILE_CSVS = (ROOT / "orchestrator/reference/supp_table1_cifar10.csv",
                Path("/work/shared/paper/supp_table1_cifar10.csv"))
PROFILE_ROW = {"optimizer": "adam", "reg": "l2", "strength": "1e-3"}
INPUT_SHAPE = (3, 32, 32)  # CIFAR
NUM_CLASSES = 10


def default_profile_csv() -> Path:
    """The project's reference copy of the table if it ships one, else the paper's."""
    return next((p for p in PROFILE_CSVS if p.exists()), PROFILE_CSVS[-1])


def load_profile(path: Path, layers: list[str]) -> dict[str, float]:
    """Fraction of filters to remove per layer, from the table's PROFILE_ROW (percentages)."""
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if all(row[k] == v for k, v in PROFILE_ROW.items()):
                return {name: float(row[name]) / 100 for name in layers}
    raise ValueError(f"{path}: no row {PROFILE_ROW}")


def measure(model: torch.nn.Module, batch: int, device: torch.device, warmup: int, repeats: int) -> float:
    """Median latency in ms of one forward of a random batch."""
    x = torch.randn(batch, *INPUT_SHAPE, device=device)
    return 1e3 * inference_latency(model, x, warmup=warmup, repeats=repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile-csv", type=Path, default=None, help="supp. Table 1 CSV (C1..C7 in %%)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    full = BasicNet(num_classes=NUM_CLASSES, in_channels=INPUT_SHAPE[0]).to(device).eval()
    csv_path = args.profile_csv or default_profile_csv()
    profile = load_profile(csv_path, [name for name, _ in conv_blocks(full)])
    sizes = {name: block.bn.num_features for name, block in conv_blocks(full)}
    pruned = remove_filters(full, {name: torch.arange(n) >= min(round(profile[name] * n), n - 1)
                                   for name, n in sizes.items()})
    one = torch.randn(1, *INPUT_SHAPE, device=device)
    latency = {
        str(b): {name: round(measure(net, b, device, args.warmup, args.repeats), 3)
                 for name, net in (("full", full), ("pruned", pruned))}
        for b in args.batch_sizes
    }
    result = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "profile_csv": str(csv_path),
        "profile_removed_pct": {k: round(100 * v) for k, v in profile.items()},
        "filters": {name: [b.conv.out_channels for _, b in conv_blocks(net)]
                    for name, net in (("full", full), ("pruned", pruned))},
        "params": {"full": sum(p.numel() for p in full.parameters()),
                   "pruned": sum(p.numel() for p in pruned.parameters())},
        "conv_params": {"full": conv_weight_count(full), "pruned": conv_weight_count(pruned)},
        "flops_per_image": {"full": count_flops(full, one), "pruned": count_flops(pruned, one)},
        "warmup": args.warmup,
        "repeats": args.repeats,
        "latency_ms": latency,
        "speedup": {b: round(t["full"] / t["pruned"], 2) for b, t in latency.items()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
