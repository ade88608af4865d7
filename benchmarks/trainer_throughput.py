"""Training throughput of our step path vs a naive torchvision-style loop, timed side by side.

naive: a `Dataset` that hands out PIL images (as torchvision's CIFAR10 does) through
`Compose([RandomHorizontalFlip(), ToTensor(), Normalize(mean, std)])`, a shuffling `DataLoader`,
and the textbook step `model(x); loss.backward(); opt.step()` with `loss.item()` every step.
ours: `sparsity_core.data.BatchLoader` over the device-resident uint8 data and the step that
`sparsity_core.loop.train` runs (`sparsity_core.engine.training_step`; no host sync inside the timed
steps), eager and/or `torch.compile`d.
Both use the same model and optimizer (`build_model` / `build_optimizer` from one `TrialConfig`),
the same data, batch size and number of steps. After a warm-up (which includes compilation) the
variants run in turn, naive, eager, compiled, naive, ..., `--repeats` rounds of `--steps` steps;
images/s is steps x batch size over a variant's median time. Training steps only, no evaluation.
`trials_per_gpu_hour` (`trials_per_cpu_hour` on CPU) prices a 325-epoch, 50k-image CIFAR trial at
those rates; it means that only with `--data cifar-shaped --width 1.0`.

The last line of stdout is one JSON object; progress goes to stderr. The default (the quick sweep's
setting: digits, BasicNet width 1/8, batch 40, CPU, all cores) takes about a minute on 2 idle
cores; on a shared machine two torch threads can take far longer (see benchmarks/README.md).

    python benchmarks/trainer_throughput.py [--data cifar-shaped] [--width 1.0] [--device cuda]
        [--precision bf16] [--compile both|on|off] [--steps N] [--repeats N] [--workers N] [--threads N]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from sparsity_core import TrialConfig
from sparsity_core.data import BatchLoader, ImageData, load_dataset
from sparsity_core.models import build_model
from sparsity_core.optim import build_optimizer
from sparsity_core.engine import training_step

# The trial that `trials_per_gpu_hour` prices: the paper's CIFAR-10 schedule, in images.
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


def trial_config(args: argparse.Namespace) -> TrialConfig:
    return TrialConfig.model_validate({
        "dataset": {"name": "digits" if args.data == "digits" else "synthetic"},
        "model": {"name": "basicnet", "width": args.width},
        "train": {"optimizer": args.optimizer, "reg": "l2", "strength": 1e-3, "batch_size": args.batch_size,
                  "precision": args.precision},
        "device": args.device,
    })


def load_images(args: argparse.Namespace, device: torch.device) -> ImageData:
    """digits as the quick sweep reads it, or the synthetic set upsampled to CIFAR's 3x32x32."""
    if args.data == "digits":
        return load_dataset(trial_config(args).dataset, device)
    cfg = trial_config(args).dataset.model_copy(update={"n_train": args.images, "n_test": 1, "image_size": 32})
    return load_dataset(cfg, device)


def forever(epoch: Callable[[], Iterator[Batch]]) -> Iterator[Batch]:
    """Batches across epoch boundaries: a fresh pass (new shuffle, new flips) whenever one ends."""
    while True:
        yield from epoch()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Variant:
    """One training setup: an endless batch stream, a step, and what ends a timed run of steps."""

    def __init__(self, name: str, batches: Iterator[Batch], step: Callable[[Batch], None],
                 finish: Callable[[], None], device: torch.device):
        self.name, self.batches, self.step, self.finish, self.device = name, batches, step, finish, device
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


def naive_variant(cfg: TrialConfig, data: ImageData, model: nn.Module, device: torch.device,
                  workers: int) -> Variant:
    optimizer = build_optimizer(model, cfg.train)
    normalize = transforms.Normalize(data.mean.tolist(), data.std.tolist())
    images = PILImages(data.train_x, data.train_y,
                       transforms.Compose([transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]))
    # drop_last: every step sees `batch_size` images, as in `train` (and as BatchNorm needs).
    loader = DataLoader(images, batch_size=cfg.train.batch_size, shuffle=True, num_workers=workers,
                        drop_last=True)
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

    return Variant("naive", forever(lambda: iter(loader)), step, lambda: None, device)


def our_variant(name: str, cfg: TrialConfig, data: ImageData, model: nn.Module, device: torch.device,
                compiled: bool) -> Variant:
    """The step function and loader that `sparsity_core.loop.train` sets up."""
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.train)
    step = training_step(model, optimizer, cfg.train.model_copy(update={"compile": compiled}), device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    loader = BatchLoader(data, "train", cfg.train.batch_size, shuffle=True, flip=cfg.dataset.augment,
                         generator=generator, drop_last=True, channels_last=device.type == "cuda")
    loss_sum = torch.zeros((), device=device)

    def run(batch: Batch) -> None:
        loss_sum.add_(step(*batch, 1.0))

    def finish() -> None:  # `train` reads the loss back once per epoch; here once per timed repeat
        loss_sum.item()

    return Variant(name, forever(lambda: iter(loader)), run, finish, device)


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


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["digits", "cifar-shaped"], default="digits")
    parser.add_argument("--images", type=int, default=10_000, help="cifar-shaped: training images")
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--batch-size", type=int, default=40)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="ours only (bf16 autocast on CUDA, as `train` does); naive stays fp32")
    parser.add_argument("--compile", choices=["both", "on", "off"], default="both",
                        help="ours with torch.compile, without, or both")
    parser.add_argument("--workers", type=int, default=0, help="naive DataLoader num_workers")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    parser.add_argument("--steps", type=int, default=30, help="training steps per timed repeat")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps per variant (compilation included)")
    parser.add_argument("--repeats", type=int, default=20,
                        help="timed rounds; short, many rounds keep bursts of load from other processes fair")
    args = parser.parse_args()
    if args.repeats < 2:
        parser.error("--repeats must be at least 2 (the quartiles need two)")

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = trial_config(args)
    data = load_images(args, device)
    torch.manual_seed(cfg.seed)
    initial = build_model(cfg.model, num_classes=data.num_classes, in_channels=data.in_channels).to(device)

    def fresh_model() -> nn.Module:
        model = build_model(cfg.model, num_classes=data.num_classes, in_channels=data.in_channels).to(device)
        model.load_state_dict(initial.state_dict())
        return model.train()

    variants = [naive_variant(cfg, data, fresh_model(), device, args.workers)]
    if args.compile in ("both", "off"):
        variants.append(our_variant("eager", cfg, data, fresh_model(), device, compiled=False))
    if args.compile in ("both", "on"):
        variants.append(our_variant("compiled", cfg, data, fresh_model(), device, compiled=True))

    for variant in variants:
        seconds = variant.run(args.warmup)
        log(f"warm-up {variant.name}: {args.warmup} steps in {seconds:.1f} s")
    samplers = {v.name: UtilizationSampler(device) for v in variants} if UtilizationSampler.available(device) else {}
    for repeat in range(args.repeats):
        for variant in variants:
            with samplers.get(variant.name, nullcontext()):
                variant.seconds.append(variant.run(args.steps))
        log(f"repeat {repeat + 1}/{args.repeats}: "
            + ", ".join(f"{v.name} {v.seconds[-1]:.2f} s" for v in variants))

    images = args.steps * args.batch_size
    rate = {v.name: images / statistics.median(v.seconds) for v in variants}
    best = max((name for name in rate if name != "naive"), key=rate.__getitem__)
    naive = variants[0].seconds
    # Naive and ours run back to back within a round, so they share that moment's load from other
    # processes: the median of per-round ratios is the steadier figure on a shared machine.
    paired = [n / o for n, o in zip(naive, next(v for v in variants if v.name == best).seconds)]
    result = {
        "images_per_s": round(rate[best], 1),
        "ours": best,
        "naive_images_per_s": round(rate["naive"], 1),
        "ratio": round(rate[best] / rate["naive"], 3),
        "paired_ratio": round(statistics.median(paired), 3),
        "eager_images_per_s": round(rate["eager"], 1) if "eager" in rate else None,
        "compiled_images_per_s": round(rate["compiled"], 1) if "compiled" in rate else None,
        "images_per_s_quartiles": {
            v.name: [round(images / s, 1) for s in reversed(statistics.quantiles(v.seconds, n=4))] for v in variants
        },
        "dataset": args.data,
        "train_images": len(data.train_y),
        "model": cfg.model.name,
        "width": args.width,
        "optimizer": args.optimizer,
        "batch_size": args.batch_size,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "precision": args.precision,
        "threads": torch.get_num_threads(),
        "naive_workers": args.workers,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "trials_per_gpu_hour" if device.type == "cuda" else "trials_per_cpu_hour": {
            name: round(r * 3600 / CIFAR_TRIAL_IMAGES, 3) for name, r in rate.items()
        },
        # None where NVML cannot be read (CPU, or no nvidia-ml-py); per variant, the median sample.
        "gpu_utilization_pct": {name: statistics.median(s.samples) for name, s in samplers.items()} or None,
        "torch": torch.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
