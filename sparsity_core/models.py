"""BasicNet and VGG-11/16 with BatchNorm, built from one conv -> BN -> activation block.

Every network here is `features` (ConvBlocks and max-pools) -> global average pool -> `classifier`.
Measurement and pruning find the conv layers as the `ConvBlock`s in `features`, named C1..Cn.

BasicNet pool placement (not given in the paper): VGG-like stages [C1 C2] pool [C3 C4] pool [C5 C6]
pool [C7], then a global average pool, so 32x32 CIFAR reaches C7 at 4x4 and 8x8 digits at 1x1. The
head is two fully connected layers (C7 -> C7 width -> classes); the average pool lets the same head
serve TinyImageNet / ImageNet sizes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn
from torchvision.models.vgg import cfgs as _TORCHVISION_VGG_CFGS

from .config import ModelConfig

__all__ = ["ConvBlock", "ConvNet", "BasicNet", "build_model", "conv_blocks", "MODELS"]

# C1..C7 filter counts; "M" is a 2x2 max-pool. C1 is 5x5, the rest 3x3 (4,649,664 conv weights).
BASICNET_PLAN: tuple[int | str, ...] = (64, 128, "M", 128, 256, "M", 256, 512, "M", 512)


class ConvBlock(nn.Module):
    """conv (no bias: BN's beta is the bias) -> BatchNorm -> ReLU / LeakyReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, activation: str, negative_slope: float):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act: nn.Module = (
            nn.LeakyReLU(negative_slope) if activation == "leaky_relu" else nn.ReLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class ConvNet(nn.Module):
    """A plan of conv widths and pools, a global average pool and a two-layer classifier."""

    def __init__(
        self,
        plan: tuple[int | str, ...],
        *,
        num_classes: int,
        in_channels: int,
        width: float,
        activation: str = "relu",
        negative_slope: float = 0.01,
        first_kernel: int = 3,
        hidden: int | None = None,
        gamma_init: float = 1.0,
        beta_init: float = 0.0,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for item in plan:
            if item == "M":
                # ceil_mode keeps a 1x1 map 1x1, so deep VGG plans still run on 8x8 inputs.
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                continue
            cout = max(1, round(int(item) * width))
            kernel = first_kernel if not layers else 3
            layers.append(ConvBlock(cin, cout, kernel, activation, negative_slope))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        hidden = hidden if hidden is not None else cin
        self.classifier = nn.Sequential(
            nn.Linear(cin, hidden),
            nn.ReLU() if activation == "relu" else nn.LeakyReLU(negative_slope),
            nn.Linear(hidden, num_classes),
        )
        init_weights(self, gamma_init, beta_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def BasicNet(
    num_classes: int = 10,
    in_channels: int = 3,
    width: float = 1.0,
    activation: str = "relu",
    negative_slope: float = 0.01,
    gamma_init: float = 1.0,
    beta_init: float = 0.0,
) -> ConvNet:
    """The paper's BasicNet: 7 conv layers of 64..512 filters (scaled by `width`)."""
    return ConvNet(BASICNET_PLAN, num_classes=num_classes, in_channels=in_channels, width=width,
                   activation=activation, negative_slope=negative_slope, first_kernel=5,
                   gamma_init=gamma_init, beta_init=beta_init)


def _vgg(letter: str) -> Callable[..., ConvNet]:
    # torchvision's own layer plans ("A" = VGG-11, "D" = VGG-16); its 4096-wide ImageNet head is
    # replaced by a head sized like the last conv layer, as CIFAR VGG variants do.
    plan = tuple(_TORCHVISION_VGG_CFGS[letter])

    def build(num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
              activation: str = "relu", negative_slope: float = 0.01,
              gamma_init: float = 1.0, beta_init: float = 0.0) -> ConvNet:
        return ConvNet(plan, num_classes=num_classes, in_channels=in_channels, width=width,
                       activation=activation, negative_slope=negative_slope,
                       gamma_init=gamma_init, beta_init=beta_init)

    return build


MODELS: dict[str, Callable[..., ConvNet]] = {
    "basicnet": BasicNet,
    "vgg11": _vgg("A"),
    "vgg16": _vgg("D"),
}


def init_weights(net: nn.Module, gamma_init: float = 1.0, beta_init: float = 0.0) -> None:
    """Xavier (uniform) with the ReLU gain on conv and linear weights; BN gamma/beta as given."""
    gain = nn.init.calculate_gain("relu")
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, gamma_init)
            nn.init.constant_(m.bias, beta_init)


def build_model(cfg: ModelConfig, *, num_classes: int, in_channels: int) -> ConvNet:
    return MODELS[cfg.name](
        num_classes=num_classes,
        in_channels=in_channels,
        width=cfg.width,
        activation=cfg.activation,
        negative_slope=cfg.negative_slope,
        gamma_init=cfg.gamma_init,
        beta_init=cfg.beta_init,
    )


def conv_blocks(net: nn.Module) -> Iterator[tuple[str, ConvBlock]]:
    """The conv layers in forward order, named C1, C2, ..."""
    blocks = (m for m in net.modules() if isinstance(m, ConvBlock))
    for i, block in enumerate(blocks, start=1):
        yield f"C{i}", block
