"""Trials per hour of a naive training loop, our solo step and our packed step, timed side by side.

naive: a `Dataset` that hands out PIL images (as torchvision's CIFAR10 does) through
`Compose([RandomHorizontalFlip(), ToTensor(), Normalize(mean, std)])`, a shuffling `DataLoader`,
and the textbook step `model(x); loss.backward(); opt.step()` with `loss.item()` every step; fp32.
solo: the engine and loader that `sparsity_core.loop.train` builds for one trial (`build_training`):
the device-resident uint8 data, batches gathered and flipped on the device, no host sync inside
the timed steps; eager on the CPU, and on CUDA with `--cuda-graph on` the whole step captured once as
a CUDA graph and replayed (a pack of one, as `train` runs it there).
packed: the same for `--pack` trials (seeds 0..N-1) as one packed model, as `train_packed` runs them.
All three train the same BasicNet and optimizer on the same data at the same batch size. After a
warm-up (which includes compilation and capture) they take turns, naive, solo, packed, naive, ...,
`--repeats` rounds of `--steps` steps; a variant's rate is its images per step over its median
round time. Training steps only, no evaluation.

`trials_per_hour` prices the paper's CIFAR-10 trial, 50,000 images x 325 epochs, at those rates (a
packed step trains `--pack` trials at once); it means that only with `--data cifar-shaped --width 1.0`.
`tflops` is each variant's achieved rate: the FLOPs of one step's forward and backward, counted once
with torch's FlopCounterMode (convolutions and matmuls; a pack's as N times one trial's), over its
median step time.

The last line of stdout is one JSON object; progress goes to stderr.

    python benchmarks/trainer_throughput.py [--pack 8] [--data cifar-shaped] [--width 1.0] [--device cuda]
        [--precision bf16] [--cuda-graph on|off] [--compile on|off] [--steps N] [--repeats N] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from sparsity_core import TrialConfig
from sparsity_core.data import ImageData, load_dataset
from sparsity_core.loop import Training, build_training
from sparsity_core.models import build_model
from sparsity_core.optim import build_optimizer

# The trial that `trials_per_hour` prices: the paper's CIFAR-10 schedule, in images.
CIFAR_TRIAL_IMAGES = 50_000 * 325
UTILIZATION_EVERY_S = 0.2  # NVML's own sample period is 1/6 to 1 s

Batch = tuple[torch.Tensor, torch.Tensor]


class PILImages(Dataset):
    """One PIL image per item, as torchvision's CIFAR10.__getitem__ makes it from an HWC array."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Callable[[Image.Image], torch.Tensor]):
        hwc = x.cpu().permute(0, 2, 3, 1).numpy()  # uint8 [N, H, W, C]
        self.images: np.ndarray = hwc[..., 0] if hwc.shape[-1] == 1 else hwc  # greyscale: PIL mode "L"
        self.targets: list[int] = y.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), self.targets[i]


def trial_config(args: argparse.Namespace, seed: int = 0) -> TrialConfig:
    """digits as the quick sweep reads it, or the synthetic set upsampled to CIFAR's 3x32x32."""
    dataset = ({"name": "digits"} if args.data == "digits"
               else {"name": "synthetic", "n_train": args.images, "n_test": 1, "image_size": 32})
    return TrialConfig.model_validate({
        "dataset": dataset,
        "model": {"name": "basicnet", "width": args.width},
        "train": {"optimizer": args.optimizer, "reg": "l2", "strength": 1e-3, "batch_size": args.batch_size,
                  "precision": args.precision, "compile": args.compile == "on", "cuda_graph": args.cuda_graph == "on"},
        "device": args.device,
        "seed": seed,
    })


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Variant:
    """One training setup: an endless batch stream, a step, what ends a timed run of steps, and
    the images and FLOPs (forward and backward) of one step."""

    def __init__(self, name: str, batches: Iterator, step: Callable[[object], None], finish: Callable[[], None],
                 device: torch.device, images_per_step: int, flops_per_step: int):
        self.name, self.batches, self.step, self.finish, self.device = name, batches, step, finish, device
        self.images_per_step, self.flops_per_step = images_per_step, flops_per_step
        self.seconds: list[float] = []

    def run(self, steps: int) -> float:
        """Seconds for `steps` training steps, until the device has finished them."""
        sync(self.device)
        start = time.perf_counter()
        for batch in itertools.islice(self.batches, steps):
            self.step(batch)
        self.finish()
        sync(self.device)
        return time.perf_counter() - start


def step_flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of one training step's forward and backward (torch's count: convolutions and matmuls),
    on a copy, so the model's weights and BN statistics stay as they are."""
    model = copy.deepcopy(model).train()
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops()


def naive_variant(cfg: TrialConfig, data: ImageData, device: torch.device, workers: int) -> Variant:
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, num_classes=data.num_classes, in_channels=data.in_channels).to(device).train()
    optimizer = build_optimizer(model, cfg.train)
    normalize = transforms.Normalize(data.mean.tolist(), data.std.tolist())
    images = PILImages(data.train_x, data.train_y,
                       transforms.Compose([transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]))
    # drop_last: every step sees `batch_size` images, as in `train` (and as BatchNorm needs).
    loader = DataLoader(images, batch_size=cfg.train.batch_size, shuffle=True, num_workers=workers, drop_last=True)
    criterion = nn.CrossEntropyLoss()
    running_loss = 0.0

    def step(batch: Batch) -> None:
        nonlocal running_loss
        x, y = batch[0].to(device), batch[1].to(device)
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()

    x, y = next(iter(loader))
    return Variant("naive", forever(lambda: iter(loader)), step, lambda: None, device, cfg.train.batch_size,
                   step_flops(model, x.to(device), y.to(device)))


def our_variant(name: str, training: Training) -> Variant:
    """The engine and loaders that `train` (one trial) or `train_packed` (a pack) builds."""
    engine, loaders, device = training.engine, training.loaders, training.device
    n = len(loaders)
    engine.set_lr_factors([1.0] * n)
    engine.model.train()
    # A pack's step is N trials' steps (no layer mixes trials). Counted on one trial: torch's
    # counter takes a grouped convolution's weight gradient for an ungrouped one's (N times too many).
    flops = n * step_flops(engine.trial(0), *next(iter(loaders[0])))
    loss_sum = torch.zeros(n, device=device)

    def run(batch: Sequence[Batch]) -> None:
        loss_sum.add_(engine.step(batch))

    def finish() -> None:  # `train` reads the losses back once per epoch; here once per timed round
        loss_sum.sum().item()

    return Variant(name, forever(lambda: zip(*loaders)), run, finish, device, n * loaders[0].batch_size, flops)


def forever(epoch: Callable[[], Iterator]) -> Iterator:
    """Batches across epoch boundaries: a fresh pass (new shuffle, new flips) whenever one ends."""
    while True:
        yield from epoch()


class UtilizationSampler:
    """GPU utilisation (%) sampled from NVML in a background thread while a variant runs."""

    def __init__(self, device: torch.device):
        self.device = device
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def available(device: torch.device) -> bool:
        if device.type != "cuda":
            return False
        try:
            torch.cuda.utilization(device)
        except ModuleNotFoundError:  # torch reads NVML through the optional nvidia-ml-py (pynvml)
            return False
        return True

    def __enter__(self) -> UtilizationSampler:
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        # NVML's reading covers its last sample period: taken now, it is this variant's.
        self.samples.append(torch.cuda.utilization(self.device))

    def _poll(self) -> None:
        while not self._stop.wait(UTILIZATION_EVERY_S):
            self.samples.append(torch.cuda.utilization(self.device))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
              if line.startswith("model name")] if cpuinfo.is_file() else []
    return models[0] if models else platform.processor() or platform.machine()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=int, default=8, help="trials in the packed variant's pack")
    parser.add_argument("--data", choices=["digits", "cifar-shaped"], default="digits")
    parser.add_argument("--images", type=int, default=10_000, help="cifar-shaped: training images")
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--batch-size", type=int, default=40)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="solo and packed (bf16 autocast on CUDA, as `train` does); naive stays fp32")
    parser.add_argument("--cuda-graph", choices=["on", "off"], default="on",
                        help="solo and packed: capture the step as a CUDA graph (train.cuda_graph; CUDA only)")
    parser.add_argument("--compile", choices=["on", "off"], default="off",
                        help="solo and packed: torch.compile the forward and the update (train.compile)")
    parser.add_argument("--workers", type=int, default=0, help="naive DataLoader num_workers")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    parser.add_argument("--steps", type=int, default=30, help="training steps per timed round")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps per variant (compilation included)")
    parser.add_argument("--repeats", type=int, default=20,
                        help="timed rounds; short, many rounds keep bursts of load from other processes fair")
    args = parser.parse_args()
    if args.repeats < 2:
        parser.error("--repeats must be at least 2 (the quartiles need two)")
    if args.pack < 1:
        parser.error("--pack must be at least 1")

    torch.set_num_threads(args.threads)
    cfgs = [trial_config(args, seed) for seed in range(args.pack)]
    device = torch.device(args.device)
    data = load_dataset(cfgs[0].dataset, device)
    variants = [
        naive_variant(cfgs[0], data, device, args.workers),
        our_variant("solo", build_training(cfgs[:1], packed=False, data=data)),
        our_variant("packed", build_training(cfgs, packed=True, data=data)),
    ]
    for variant in variants:
        seconds = variant.run(args.warmup)
        log(f"warm-up {variant.name}: {args.warmup} steps in {seconds:.1f} s")
    samplers = {v.name: UtilizationSampler(device) for v in variants} if UtilizationSampler.available(device) else {}
    for repeat in range(args.repeats):
        for variant in variants:
            with samplers.get(variant.name, nullcontext()):
                variant.seconds.append(variant.run(args.steps))
        log(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(f"{v.name} {v.seconds[-1]:.2f} s" for v in variants))

    step_s = {v.name: statistics.median(v.seconds) / args.steps for v in variants}
    rate = {v.name: v.images_per_step / step_s[v.name] for v in variants}
    naive = variants[0].seconds
    # Naive and ours run back to back within a round, so they share that moment's load from other
    # processes: the median of per-round ratios is the steadier figure on a shared machine.
    paired = {v.name: statistics.median(n / o * v.images_per_step / variants[0].images_per_step
                                        for n, o in zip(naive, v.seconds)) for v in variants[1:]}
    result = {
        "trials_per_hour": {name: round(r * 3600 / CIFAR_TRIAL_IMAGES, 3) for name, r in rate.items()},
        "pack": args.pack,
        "images_per_s": {name: round(r, 1) for name, r in rate.items()},
        "ratio": {name: round(rate[name] / rate["naive"], 3) for name in ("solo", "packed")},
        "paired_ratio": {name: round(r, 3) for name, r in paired.items()},
        "tflops": {v.name: round(v.flops_per_step / step_s[v.name] / 1e12, 4) for v in variants},
        "flops_per_image": variants[1].flops_per_step // variants[1].images_per_step,
        "images_per_s_quartiles": {
            v.name: [round(v.images_per_step * args.steps / s, 1)
                     for s in reversed(statistics.quantiles(v.seconds, n=4))]
            for v in variants
        },
        "dataset": args.data,
        "train_images": len(data.train_y),
        "model": cfgs[0].model.name,
        "width": args.width,
        "optimizer": args.optimizer,
        "batch_size": args.batch_size,
        "device": str(device),
        "device_name": device_name(device),
        "precision": args.precision,
        "cuda_graph": args.cuda_graph == "on" and device.type == "cuda",
        "compile": args.compile == "on",
        "threads": torch.get_num_threads(),
        "naive_workers": args.workers,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        # None where NVML cannot be read (CPU, or no nvidia-ml-py); per variant, the median sample.
        "gpu_utilization_pct": {name: statistics.median(s.samples) for name, s in samplers.items()} or None,
        "torch": torch.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
