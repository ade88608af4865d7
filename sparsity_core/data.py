"""Datasets as device-resident uint8 tensors, and the batch loader that feeds them.

A dataset loads once into `ImageData`: each split as one uint8 [N, C, H, W] tensor on the training
device, plus the per-channel statistics of the training split. `BatchLoader` then gathers batches by
index and flips and normalizes them as batch tensor ops (airbench's `CifarLoader`): no DataLoader,
no per-image Python and no `.item()` inside an epoch.
"""

from __future__ import annotations

import fcntl
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import datasets, transforms
from torchvision.datasets.utils import check_integrity, download_and_extract_archive

from sparsity_core.config import DataConfig, DatasetError

__all__ = [
    "ImageData",
    "check_dataset",
    "prepare_dataset",
    "load_dataset",
    "BatchLoader",
]

_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
_IMAGEFOLDER_SIZE = 64  # pixels a side when `image_size` is unset: TinyImageNet's native size
_STAGING_DOCS = "docs/cluster.md (Datasets on a cluster)"
_DOWNLOAD_LOCK = ".download.lock"  # in the root: one download at a time per root, across processes and nodes
_RESIZE_CHUNK = 4096  # images resized at a time: bounds the float32 copy to ~200 MB at 64x64 RGB

# Synthetic set: fixed seeds (not the trial seed), so every trial sees the same images. Each split
# has its own stream, so the test set does not change with n_train.
_SYNTHETIC_SEEDS = {"prototypes": 1000, "train": 1001, "test": 1002}
_SYNTHETIC_CLASSES = 10
_SYNTHETIC_NOISE = 64.0  # std of the per-pixel noise, in 0..255 grey levels


def _error(cfg: DataConfig, problem: str, fix: str) -> DatasetError:
    return DatasetError(f"dataset {cfg.name!r} (root {cfg.root}): {problem}. Fix: {fix}")


@dataclass(frozen=True, eq=False)  # eq=False: field-wise == on tensors is ambiguous
class ImageData:
    """Both splits of one dataset on the training device, and the training split's statistics."""

    train_x: torch.Tensor  # uint8 [N, C, H, W]
    train_y: torch.Tensor  # int64 [N]
    test_x: torch.Tensor  # uint8 [M, C, H, W]
    test_y: torch.Tensor  # int64 [M]
    num_classes: int
    mean: torch.Tensor  # float32 [C], of train_x / 255
    std: torch.Tensor  # float32 [C], of train_x / 255

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_x.shape[2]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 [B, C, H, W] -> float32, per channel zero mean and unit std on the train set."""
        return (x.float() / 255 - self.mean[:, None, None]) / self.std[:, None, None]


class _Splits(NamedTuple):
    """A dataset as read from disk, on the CPU, before resizing and statistics."""

    train_x: torch.Tensor  # uint8 [N, C, H, W]
    train_y: torch.Tensor  # int64 [N]
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int


def _digits(cfg: DataConfig) -> _Splits:
    # Imported here: scikit-learn takes a second to import and pulls in pandas and pyarrow.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    # Pixels count set bits in 4x4 blocks of the scanned digit, 0..16; rescale to 0..255.
    images = np.rint(bunch.images * 255 / 16).astype(np.uint8)[:, None]  # [1797, 1, 8, 8]
    # A fixed split, not the trial seed: every trial of a sweep is scored on the same test set.
    train_x, test_x, train_y, test_y = train_test_split(
        images, bunch.target, test_size=0.25, random_state=0, stratify=bunch.target
    )
    return _Splits(
        torch.from_numpy(train_x),
        torch.from_numpy(train_y).long(),
        torch.from_numpy(test_x),
        torch.from_numpy(test_y).long(),
        len(bunch.target_names),
    )


def _synthetic(cfg: DataConfig) -> _Splits:
    """One random 3x8x8 prototype per class; an image is its class's prototype plus pixel noise.

    The noise is large enough that a split is not linearly trivial per pixel, small enough that
    a small CNN fits it in a few epochs: a fast, learnable stand-in for tests.
    """
    shape = (3, 8, 8)
    g = torch.Generator().manual_seed(_SYNTHETIC_SEEDS["prototypes"])
    prototypes = torch.rand(_SYNTHETIC_CLASSES, *shape, generator=g) * 255

    def draw(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, _SYNTHETIC_CLASSES, (n,), generator=g)
        x = prototypes[y] + _SYNTHETIC_NOISE * torch.randn(n, *shape, generator=g)
        return x.round().clamp(0, 255).to(torch.uint8), y

    train_x, train_y = draw(cfg.n_train, _SYNTHETIC_SEEDS["train"])
    test_x, test_y = draw(cfg.n_test, _SYNTHETIC_SEEDS["test"])
    return _Splits(train_x, train_y, test_x, test_y, _SYNTHETIC_CLASSES)


_CIFAR: dict[str, type[datasets.CIFAR10]] = {
    "cifar10": datasets.CIFAR10,
    "cifar100": datasets.CIFAR100,
}


def _root(cfg: DataConfig) -> Path:
    assert cfg.root is not None, "DataConfig requires `root` for every dataset read from files"
    return Path(cfg.root)


def _check_cifar(cfg: DataConfig) -> None:
    if cfg.download:  # prepare_dataset fetches what is missing and verifies it
        return
    cls = _CIFAR[cfg.name]
    root = _root(cfg)
    folder = root / cls.base_folder
    fix = f"set dataset.download: true or put {cls.base_folder}/ under {root}; see {_CIFAR_URL}"
    if not root.is_dir():
        raise _error(cfg, "the root folder does not exist", fix)
    if not folder.is_dir():
        raise _error(cfg, f"no {cls.base_folder}/ folder under the root", fix)
    # File names from torchvision's own table, so this check cannot drift from what it reads.
    expected = [name for name, _md5 in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    missing = [name for name in expected if not (folder / name).is_file()]
    if missing:
        raise _error(cfg, f"{folder} lacks {', '.join(missing)}", fix)


def _cifar(cfg: DataConfig) -> _Splits:
    cls = _CIFAR[cfg.name]

    def split(train: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
        try:  # never downloads here: `prepare_dataset` did that, once per root, under a lock
            ds = cls(_root(cfg), train=train, download=False)
        except RuntimeError as err:  # torchvision's md5 check: a partial or altered copy
            folder = _root(cfg) / cls.base_folder
            raise _error(
                cfg, str(err), f"delete {folder} and set dataset.download: true; see {_CIFAR_URL}"
            ) from err
        # .data is [N, 32, 32, 3] (HWC, as torchvision hands it to PIL); models take CHW.
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        return x, torch.tensor(ds.targets, dtype=torch.int64), len(ds.classes)

    train_x, train_y, num_classes = split(train=True)
    test_x, test_y, _ = split(train=False)
    return _Splits(train_x, train_y, test_x, test_y, num_classes)


def _cifar_complete(cfg: DataConfig) -> bool:
    """Every CIFAR file under the root passes torchvision's md5 check: a partial copy (a download
    interrupted, or still running) does not."""
    cls = _CIFAR[cfg.name]
    files = [*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"])]
    return all(check_integrity(str(_root(cfg) / cls.base_folder / name), md5) for name, md5 in files)


def _fetch_cifar(cfg: DataConfig) -> None:
    cls = _CIFAR[cfg.name]
    root = _root(cfg)
    try:
        download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5,
                                     remove_finished=True)
    except (OSError, RuntimeError) as err:  # no network (URLError is an OSError), or a bad archive
        raise _error(cfg, f"downloading {cls.url} failed ({err})",
                     f"put {cls.base_folder}/ under {root} as {_STAGING_DOCS} says and set "
                     "dataset.download: false") from None


def _class_dirs(folder: Path) -> list[str]:
    """Class names of an ImageFolder-style folder, as torchvision's `find_classes` lists them."""
    return sorted(entry.name for entry in folder.iterdir() if entry.is_dir())


def _check_imagefolder(cfg: DataConfig) -> None:
    root = _root(cfg)
    fix = f"put train/ and val/ under {root}, each with one subfolder of images per class"
    for folder in (root, root / "train", root / "val"):
        if not folder.is_dir():
            raise _error(cfg, f"{folder} does not exist", fix)
    train_classes = _class_dirs(root / "train")
    if not train_classes:
        raise _error(cfg, f"{root / 'train'} has no class subfolders", fix)
    unknown = sorted(set(_class_dirs(root / "val")) - set(train_classes))
    if unknown:  # e.g. TinyImageNet's raw val/images/: sort val into class folders first
        raise _error(cfg, f"val/ has classes that train/ lacks: {', '.join(unknown[:5])}", fix)


def _imagefolder(cfg: DataConfig) -> _Splits:
    size = cfg.image_size or _IMAGEFOLDER_SIZE
    root = _root(cfg)
    # ImageFolder's default loader converts every image to RGB. Shorter side to `size`, then the
    # central square: non-square photos keep their aspect ratio.
    to_tensor = transforms.Compose(
        [transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()]
    )
    train = datasets.ImageFolder(root / "train", transform=to_tensor)
    val = datasets.ImageFolder(root / "val", transform=to_tensor)
    # val indexes its own (possibly smaller) class list; map each name to train's index.
    val_to_train = torch.tensor([train.class_to_idx[name] for name in val.classes])

    def stack(folder: datasets.ImageFolder) -> torch.Tensor:
        # Decoding image files is per-image by nature; it happens once, here, at load time.
        return torch.stack([image for image, _label in folder])

    return _Splits(
        stack(train),
        torch.tensor(train.targets, dtype=torch.int64),
        stack(val),
        val_to_train[torch.tensor(val.targets, dtype=torch.int64)],
        len(train.classes),
    )


def _no_files(cfg: DataConfig) -> None:
    """digits ships with scikit-learn and synthetic is generated: nothing to check."""


DATASETS: dict[str, Callable[[DataConfig], _Splits]] = {
    "digits": _digits,
    "synthetic": _synthetic,
    "cifar10": _cifar,
    "cifar100": _cifar,
    "imagefolder": _imagefolder,
}
_CHECKS: dict[str, Callable[[DataConfig], None]] = {
    "digits": _no_files,
    "synthetic": _no_files,
    "cifar10": _check_cifar,
    "cifar100": _check_cifar,
    "imagefolder": _check_imagefolder,
}


class _Download(NamedTuple):
    complete: Callable[[DataConfig], bool]  # verified, so true only once a download has finished
    fetch: Callable[[DataConfig], None]


# The datasets `download: true` can fetch; the others ignore it.
_DOWNLOADS: dict[str, _Download] = {
    "cifar10": _Download(_cifar_complete, _fetch_cifar),
    "cifar100": _Download(_cifar_complete, _fetch_cifar),
}


def check_dataset(cfg: DataConfig) -> None:
    """Raise DatasetError if `cfg`'s files are missing, as `load_dataset` would, without reading
    any image: a sweep can fail fast before it schedules trials. With `download: true`, files that
    `prepare_dataset` can fetch may be missing."""
    _CHECKS[cfg.name](cfg)


def prepare_dataset(cfg: DataConfig) -> None:
    """Make `cfg`'s files ready to load on this machine, or raise DatasetError naming the fix.

    With `download: true` (CIFAR), files that pass their checksums are used as they are (a
    read-only root too); otherwise the first caller on a root downloads under an exclusive lock
    file in the root, and others on the same root (other trials, other nodes on a shared
    filesystem) wait for it and then find the files: a root is downloaded once, never per trial.
    The lock is an flock, which NFS (v4) and EFS hold across nodes too. Without `download`, the
    files are checked only.
    """
    download = _DOWNLOADS.get(cfg.name) if cfg.download else None
    if download is None:
        check_dataset(cfg)
        return
    if download.complete(cfg):
        return
    lock = _root(cfg) / _DOWNLOAD_LOCK
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise _error(cfg, f"cannot create {lock} ({err.strerror})",
                     "make the root writable, or stage the files there and set dataset.download: false") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks while another process downloads into this root
        if not download.complete(cfg):  # the one it waited for may have downloaded them
            download.fetch(cfg)
    finally:
        os.close(fd)  # releases the lock


def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """uint8 [N, C, H, W] -> uint8 [N, C, size, size], bilinear; antialiased when shrinking."""
    if size is None or x.shape[-2:] == (size, size):
        return x
    antialias = size < max(x.shape[-2:])
    chunks = [
        F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=antialias)
        .round_()
        .clamp_(0, 255)
        .to(torch.uint8)
        for chunk in x.split(_RESIZE_CHUNK)
    ]
    return torch.cat(chunks)


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of x / 255 for uint8 [N, C, H, W], exact.

    Computed from a 256-bin histogram per channel, so no float copy of the whole set is made
    (4 bytes per pixel: 600 MB for CIFAR's training split).
    """
    levels = torch.arange(256, dtype=torch.float64, device=x.device) / 255
    counts = torch.stack(
        [torch.bincount(x[:, c].flatten(), minlength=256) for c in range(x.shape[1])]
    ).double()  # [C, 256]
    n = counts.sum(dim=1)
    mean = counts @ levels / n
    var = counts @ levels**2 / n - mean**2
    return mean.float(), var.clamp(min=0).sqrt().float()


def load_dataset(cfg: DataConfig, device: torch.device | str = "cpu") -> ImageData:
    """Read `cfg`'s dataset, resize it to `cfg.image_size` if set, and place it on `device`.
    Files are prepared first (see `prepare_dataset`): on a staged root nothing is downloaded."""
    prepare_dataset(cfg)
    splits = DATASETS[cfg.name](cfg)
    train_x = _resize(splits.train_x, cfg.image_size)
    test_x = _resize(splits.test_x, cfg.image_size)
    mean, std = _channel_stats(train_x)
    return ImageData(
        train_x=train_x.to(device),
        train_y=splits.train_y.to(device),
        test_x=test_x.to(device),
        test_y=splits.test_y.to(device),
        num_classes=splits.num_classes,
        mean=mean.to(device),
        std=std.to(device),
    )


class BatchLoader:
    """Batches of one split, gathered by index from the device-resident tensors.

    Each pass draws a fresh permutation (when `shuffle`) and flip mask (when `flip`) from
    `generator`, so the same generator state gives the same batches.
    """

    def __init__(
        self,
        data: ImageData,
        split: Literal["train", "test"],
        batch_size: int,
        *,
        shuffle: bool,
        flip: bool,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        channels_last: bool = False,
    ) -> None:
        self.data = data
        self.x, self.y = {
            "train": (data.train_x, data.train_y),
            "test": (data.test_x, data.test_y),
        }[split]
        if generator is not None and generator.device.type != self.x.device.type:
            raise ValueError(
                f"generator is on {generator.device} but the data is on {self.x.device}; "
                f"create it with torch.Generator(device={str(self.x.device)!r})"
            )
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.flip = flip
        self.generator = generator
        self.drop_last = drop_last
        # NHWC batches feed tensor-core convolutions on GPUs without a layout change per layer.
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x float32 normalized [B, C, H, W], y int64 [B]) on the data's device."""
        n, device = self.x.shape[0], self.x.device
        order = (
            torch.randperm(n, generator=self.generator, device=device)
            if self.shuffle
            else torch.arange(n, device=device)
        )
        if self.flip:  # each image mirrored left-right with probability 1/2, drawn once per pass
            flips = torch.rand(n, 1, 1, 1, generator=self.generator, device=device) < 0.5
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            x, y = self.x[index], self.y[index]
            if self.flip:
                x = torch.where(flips[start : start + self.batch_size], x.flip(3), x)
            yield self.data.normalize(x).contiguous(memory_format=self.memory_format), y
