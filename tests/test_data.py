"""Datasets read from real files in tmp_path, and the device-resident batch loader."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets

from sparsity_core.config import DATASET_NAMES, DataConfig, DatasetError
from sparsity_core.data import (
    _CHECKS,
    DATASETS,
    BatchLoader,
    ImageData,
    check_dataset,
    load_dataset,
    prepare_dataset,
)

from .cifar import accept_checksums, images, write_cifar10, write_cifar100

# --- registry ----------------------------------------------------------------------------------


def test_every_configurable_dataset_has_a_loader_and_a_check() -> None:
    assert set(DATASETS) == set(_CHECKS) == set(DATASET_NAMES)


# --- digits and synthetic ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> ImageData:
    return load_dataset(DataConfig(name="digits"))


def test_digits_shapes_and_values(digits: ImageData) -> None:
    assert digits.train_x.shape == (1347, 1, 8, 8) and digits.test_x.shape == (450, 1, 8, 8)
    assert digits.train_x.dtype == digits.test_x.dtype == torch.uint8
    assert digits.train_y.dtype == digits.test_y.dtype == torch.int64
    assert (digits.num_classes, digits.in_channels, digits.image_size) == (10, 1, 8)
    # Stratified: every class in both splits; 0..16 scaled to the full 0..255 range.
    assert digits.train_y.unique().tolist() == digits.test_y.unique().tolist() == list(range(10))
    assert digits.train_x.min() == 0 and digits.train_x.max() == 255


def test_digits_split_ignores_the_trial_seed(digits: ImageData) -> None:
    torch.manual_seed(12345)
    np.random.seed(54321)
    again = load_dataset(DataConfig(name="digits"))
    assert torch.equal(again.train_x, digits.train_x) and torch.equal(again.test_y, digits.test_y)


def test_digits_resized(digits: ImageData) -> None:
    big = load_dataset(DataConfig(name="digits", image_size=16))
    assert big.train_x.shape == (1347, 1, 16, 16) and big.train_x.dtype == torch.uint8
    assert torch.equal(big.train_y, digits.train_y)


def test_synthetic_is_deterministic_and_learnable() -> None:
    cfg = DataConfig(name="synthetic", n_train=300, n_test=100)
    a, b = load_dataset(cfg), load_dataset(cfg)
    assert a.train_x.shape == (300, 3, 8, 8) and a.test_x.shape == (100, 3, 8, 8)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    # The test set does not depend on how many training images were drawn.
    other = load_dataset(DataConfig(name="synthetic", n_train=50, n_test=100))
    assert torch.equal(other.test_x, a.test_x)
    # Learnable: nearest class mean of the training images already classifies most test images.
    train, test = a.train_x.flatten(1).float(), a.test_x.flatten(1).float()
    centroids = torch.stack([train[a.train_y == c].mean(0) for c in range(a.num_classes)])
    predicted = torch.cdist(test, centroids).argmin(1)
    assert (predicted == a.test_y).float().mean() > 0.9


# --- CIFAR -------------------------------------------------------------------------------------


def test_cifar10_reads_the_files_back_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = write_cifar10(tmp_path)
    accept_checksums(monkeypatch, datasets.CIFAR10, tmp_path / "cifar-10-batches-py")
    cfg = DataConfig(name="cifar10", root=str(tmp_path))
    check_dataset(cfg)
    data = load_dataset(cfg)
    train = [written[f"data_batch_{i}"] for i in range(1, 6)]
    assert torch.equal(data.train_x, images(np.concatenate([x for x, _ in train])))
    assert data.train_y.tolist() == [label for _, labels in train for label in labels]
    assert torch.equal(data.test_x, images(written["test_batch"][0]))
    assert data.test_y.tolist() == written["test_batch"][1]
    assert (data.num_classes, data.in_channels, data.image_size) == (10, 3, 32)
    assert data.train_y.dtype == torch.int64
    small = load_dataset(DataConfig(name="cifar10", root=str(tmp_path), image_size=16))
    assert small.train_x.shape == (50, 3, 16, 16) and small.test_x.dtype == torch.uint8


def test_cifar100_reads_fine_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = write_cifar100(tmp_path)
    accept_checksums(monkeypatch, datasets.CIFAR100, tmp_path / "cifar-100-python")
    data = load_dataset(DataConfig(name="cifar100", root=str(tmp_path)))
    assert torch.equal(data.train_x, images(written["train"][0]))
    assert data.train_y.tolist() == written["train"][1]
    assert data.test_y.tolist() == written["test"][1]
    assert data.num_classes == 100


def test_cifar_files_that_fail_the_md5_check_are_rejected(tmp_path: Path) -> None:
    # Not the official release and no accept_checksums: torchvision's md5 check stays on.
    write_cifar10(tmp_path)
    with pytest.raises(DatasetError, match="download: true") as err:
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    assert str(tmp_path) in str(err.value)


def test_cifar_missing_root_folder_or_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    for root in (missing, tmp_path):
        cfg = DataConfig(name="cifar10", root=str(root))
        for call in (check_dataset, load_dataset):
            with pytest.raises(DatasetError, match="cifar-10-batches-py") as err:
                call(cfg)
            assert cfg.root in str(err.value) and "download: true" in str(err.value)
    write_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "test").unlink()
    with pytest.raises(DatasetError, match="lacks test"):
        check_dataset(DataConfig(name="cifar100", root=str(tmp_path)))
    # With download on, the check leaves fetching to torchvision.
    check_dataset(DataConfig(name="cifar10", root=str(missing), download=True))


# --- where the data lives: one download per root (resolved roots: test_config.py) -------------


def test_concurrent_callers_download_a_root_once(cifar_release, tmp_path: Path) -> None:
    requests, written = cifar_release
    # Files that pass their checksums are used as they are: no lock file (the root may be read-only).
    prepare_dataset(DataConfig(name="cifar10", root=str(tmp_path / "release"), download=True))
    assert requests == [] and not (tmp_path / "release" / ".download.lock").exists()
    prepare_dataset(DataConfig(name="cifar10", root=str(tmp_path / "alone"), download=True))
    per_download = len(requests)  # torchvision's redirect probe is a GET too
    assert per_download and set(requests) == {f"/{datasets.CIFAR10.filename}"}
    cfg = DataConfig(name="cifar10", root=str(tmp_path / "shared"), download=True)
    # Three processes at once, as trials or nodes sharing a root would: one downloads, the others
    # wait on the lock and then find the files. (fork: the children see the patched URL.)
    with multiprocessing.get_context("fork").Pool(3) as pool:
        pool.map(prepare_dataset, [cfg] * 3)
    assert len(requests) == 2 * per_download
    assert not (tmp_path / "shared" / datasets.CIFAR10.filename).exists()  # the archive is not kept
    data = load_dataset(cfg)  # prepares again: the files pass the md5 check, nothing is fetched
    assert torch.equal(data.test_x, images(written["test_batch"][0]))
    assert len(requests) == 2 * per_download
    # A copy that fails the md5 check (an interrupted download) is fetched again.
    (tmp_path / "shared" / "cifar-10-batches-py" / "test_batch").write_bytes(b"partial")
    prepare_dataset(cfg)
    assert len(requests) == 3 * per_download
    assert torch.equal(load_dataset(cfg).test_x, data.test_x)


def test_a_failed_download_names_the_fix(cifar_release, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.CIFAR10, "url", "http://127.0.0.1:1/cifar-10-python.tar.gz")
    cfg = DataConfig(name="cifar10", root=str(tmp_path / "offline"), download=True)
    with pytest.raises(DatasetError, match="download: false") as err:
        prepare_dataset(cfg)
    assert "127.0.0.1:1" in str(err.value) and "docs/cluster.md" in str(err.value)


def test_without_download_files_are_only_checked(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="the root folder does not exist"):
        prepare_dataset(DataConfig(name="cifar10", root=str(tmp_path / "nowhere")))
    assert not (tmp_path / "nowhere").exists()  # nothing created: the root may be read-only
    write_cifar10(tmp_path)
    prepare_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    prepare_dataset(DataConfig(name="synthetic", download=True))  # nothing to download


# --- imagefolder -------------------------------------------------------------------------------

_COLORS = {"cat": (200, 30, 10), "dog": (5, 120, 250)}


def _png(path: Path, color: tuple[int, int, int], size: tuple[int, int], mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).convert(mode).save(path)


def _write_imagefolder(root: Path) -> None:
    for name, color in _COLORS.items():
        _png(root / "train" / name / "a.png", color, (40, 30))
        _png(root / "train" / name / "b.png", color, (64, 64))
    _png(root / "val" / "dog" / "c.png", _COLORS["dog"], (100, 80))
    _png(root / "train" / "grey" / "d.png", (90, 90, 90), (20, 20), mode="L")


def test_imagefolder_resizes_to_rgb_and_maps_val_classes(tmp_path: Path) -> None:
    _write_imagefolder(tmp_path)
    data = load_dataset(DataConfig(name="imagefolder", root=str(tmp_path), image_size=16))
    assert data.train_x.shape == (5, 3, 16, 16) and data.test_x.shape == (1, 3, 16, 16)
    assert data.num_classes == 3  # cat, dog, grey: sorted folder names
    assert data.train_y.tolist() == [0, 0, 1, 1, 2]
    # val holds only "dog": its own index 0 is re-mapped to train's index 1.
    assert data.test_y.tolist() == [1]
    # Solid colours survive resizing exactly; the greyscale PNG comes back as three equal channels.
    assert (data.test_x[0] == torch.tensor(_COLORS["dog"], dtype=torch.uint8)[:, None, None]).all()
    assert (data.train_x[4] == 90).all()
    assert load_dataset(DataConfig(name="imagefolder", root=str(tmp_path))).image_size == 64


def test_imagefolder_missing_or_mismatched_folders(tmp_path: Path) -> None:
    _write_imagefolder(tmp_path)
    _png(tmp_path / "val" / "horse" / "e.png", (0, 0, 0), (8, 8))
    cfg = DataConfig(name="imagefolder", root=str(tmp_path))
    with pytest.raises(DatasetError, match="horse"):
        load_dataset(cfg)
    for absent in ("val", "train"):
        root = tmp_path / f"without_{absent}"
        (root / ("train" if absent == "val" else "val") / "cat").mkdir(parents=True)
        for call in (check_dataset, load_dataset):
            with pytest.raises(DatasetError, match=f"{absent} does not exist") as err:
                call(DataConfig(name="imagefolder", root=str(root)))
            assert str(root) in str(err.value)


# --- BatchLoader -------------------------------------------------------------------------------


def _indexed(n: int) -> ImageData:
    """Image i is filled with the value i, so a batch tells which images it holds."""
    x = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 1, 4, 4).contiguous()
    zero, one = torch.zeros(1), torch.ones(1)
    return ImageData(x, torch.arange(n) % 7, x, torch.arange(n) % 7, 7, zero, one)


def _indices(x: torch.Tensor) -> torch.Tensor:
    return (x[:, 0, 0, 0] * 255).round().long()


def test_loader_covers_every_sample_once_per_epoch() -> None:
    generator = torch.Generator().manual_seed(0)
    loader = BatchLoader(_indexed(103), "train", 10, shuffle=True, flip=True, generator=generator)
    assert len(loader) == 11
    for _epoch in range(2):
        batches = list(loader)
        assert [y.shape[0] for _, y in batches] == [10] * 10 + [3]
        seen = torch.cat([_indices(x) for x, _ in batches])
        assert sorted(seen.tolist()) == list(range(103))
        assert torch.equal(torch.cat([y for _, y in batches]), seen % 7)  # labels travel along
        assert batches[0][0].dtype == torch.float32 and batches[0][1].dtype == torch.int64
    in_order = BatchLoader(_indexed(103), "test", 10, shuffle=False, flip=False)
    assert torch.cat([_indices(x) for x, _ in in_order]).tolist() == list(range(103))


def test_loader_drop_last() -> None:
    loader = BatchLoader(_indexed(103), "train", 10, shuffle=True, flip=False, drop_last=True)
    assert len(loader) == 10 and [y.shape[0] for _, y in loader] == [10] * 10


def test_loader_same_seed_same_batches() -> None:
    data = load_dataset(DataConfig(name="synthetic", n_train=64, n_test=16))

    def epoch(seed: int) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        loader = BatchLoader(data, "train", 16, shuffle=True, flip=True, generator=generator)
        return [x for x, _ in loader]

    assert all(torch.equal(a, b) for a, b in zip(epoch(3), epoch(3), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(epoch(3), epoch(4), strict=True))


def test_loader_flips_about_half() -> None:
    n = 2000
    x = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)
    x[..., 1] = 255  # dark left column, bright right one: a flip swaps them
    y = torch.zeros(n, dtype=torch.int64)
    data = ImageData(x, y, x, y, 1, mean=torch.zeros(1), std=torch.ones(1))
    generator = torch.Generator().manual_seed(0)
    loader = BatchLoader(data, "train", 500, shuffle=False, flip=True, generator=generator)
    images = torch.cat([x for x, _ in loader])
    flipped = images[:, 0, 0, 0] == 1
    assert 0.45 < flipped.float().mean() < 0.55
    assert (images[flipped] == images[~flipped][:1].flip(3)).all()  # a mirror image, nothing else


def test_normalize_gives_zero_mean_unit_std(digits: ImageData) -> None:
    x = digits.normalize(digits.train_x)
    assert x.dtype == torch.float32
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(1), atol=1e-4, rtol=0)
    torch.testing.assert_close(x.std(dim=(0, 2, 3)), torch.ones(1), atol=1e-3, rtol=0)
    # The histogram statistics agree with the direct float computation.
    direct = digits.train_x.float() / 255
    torch.testing.assert_close(digits.mean, direct.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(digits.std, direct.std(dim=(0, 2, 3), unbiased=False))
