"""The fast paths compute what the plain path computes: batch-op loading vs torchvision's per-image
transforms, torch.compile vs eager, channels_last vs contiguous, and `train` with `compile: true`."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms
from torchvision.transforms import functional as TF

from sparsity_core import DataConfig, train
from sparsity_core.data import BatchLoader, ImageData, load_dataset
from sparsity_core.models import build_model
from sparsity_core.optim import build_optimizer


@pytest.fixture(scope="module")
def data() -> ImageData:
    # Prototype plus pixel noise: no two images alike and none left-right symmetric, so each
    # loaded sample names the one image and flip it came from.
    return load_dataset(DataConfig(name="synthetic", n_train=64, n_test=16))


def per_image_reference(data: ImageData) -> torch.Tensor:
    """[N, 2, C, H, W]: every training image as torchvision's per-image pipeline makes it,
    unflipped (index 0) and flipped (index 1), through PIL as a torchvision Dataset hands it out."""
    normalize = transforms.Normalize(data.mean.tolist(), data.std.tolist())
    to_float = transforms.Compose([transforms.ToTensor(), normalize])
    out = []
    for image in data.train_x:
        pil = Image.fromarray(image.permute(1, 2, 0).numpy())
        out.append(torch.stack([to_float(pil), to_float(TF.hflip(pil))]))
    return torch.stack(out)


def test_loader_batches_equal_the_per_image_pipeline_on_the_generators_permutation(data: ImageData) -> None:
    reference = per_image_reference(data)
    n = len(data.train_y)
    loader = BatchLoader(data, "train", 10, shuffle=True, flip=True, generator=torch.Generator().manual_seed(5))
    x, y = (torch.cat(parts) for parts in zip(*loader))
    # Which (image, flip) each loaded sample is: the nearest of the 2N reference images.
    distance = (x[:, None, None] - reference[None]).flatten(3).abs().amax(3)  # [N, N, 2]
    which = distance.flatten(1).argmin(1)
    index, flipped = which // 2, (which % 2).bool()
    torch.testing.assert_close(x, reference[index, flipped.long()])  # equal, not merely nearest
    assert torch.equal(index, torch.randperm(n, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(y, data.train_y[index])
    assert 0 < flipped.sum() < n


def test_channels_last_batches_give_the_same_output(data: ImageData, tiny) -> None:
    def batches(channels_last: bool) -> list[torch.Tensor]:
        loader = BatchLoader(data, "train", 16, shuffle=True, flip=True, generator=torch.Generator().manual_seed(0),
                             channels_last=channels_last)
        return [x for x, _ in loader]

    contiguous, nhwc = batches(False), batches(True)
    assert all(x.is_contiguous(memory_format=torch.channels_last) for x in nhwc)
    torch.manual_seed(0)
    model = build_model(tiny().model, num_classes=data.num_classes, in_channels=data.in_channels)
    model_nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
    with torch.no_grad():  # training mode: BatchNorm normalizes with the batch's own statistics
        for a, b in zip(contiguous, nhwc, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
            torch.testing.assert_close(model_nhwc(b), model(a), rtol=1e-5, atol=1e-5)


@pytest.mark.integration  # compiling takes 10-30 s on 2 CPU cores
def test_compiled_training_step_matches_eager(data: ImageData, tiny) -> None:
    # SGD: its update is proportional to the gradient. Adam's first step is lr * sign(grad), which
    # turns float noise on a near-zero gradient into a full-size difference.
    cfg = tiny(optimizer="sgd")
    x, y = data.normalize(data.train_x[:32]), data.train_y[:32]
    torch.manual_seed(0)
    eager = build_model(cfg.model, num_classes=data.num_classes, in_channels=data.in_channels)
    compiled = copy.deepcopy(eager)
    torch.compiler.reset()  # a fresh cache: earlier compilations cannot push this one over the recompile limit

    def step(model: torch.nn.Module, forward: torch.nn.Module) -> torch.Tensor:
        optimizer = build_optimizer(model, cfg.train)
        loss = F.cross_entropy(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    eager_loss = step(eager, eager)
    compiled_loss = step(compiled, torch.compile(compiled, fullgraph=True))
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-4, atol=1e-6)
    for (name, p), q in zip(eager.state_dict().items(), compiled.state_dict().values(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.integration  # compiling takes 10-30 s on 2 CPU cores
def test_train_with_compile_reports_finite_metrics(tiny) -> None:
    torch.compiler.reset()
    result = train(tiny(epochs=1, lr_steps=[], compile=True))
    assert result.status == "ok"
    final = result.final
    assert final is not None and final.epoch == 1 and final.pruned
    measured = [v for v in dataclasses.astuple(final.pruned) if isinstance(v, float)]
    values = [final.train_loss, final.test_loss, final.test_err, final.dead_gamma_pct, *measured]
    assert all(math.isfinite(v) for v in values)
