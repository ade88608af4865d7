import pytest
import torch

from sparsity_core.config import ModelConfig
from sparsity_core.models import BasicNet, build_model, conv_blocks


def test_basicnet_matches_the_paper():
    net = BasicNet(num_classes=10)
    convs = [block.conv for _, block in conv_blocks(net)]
    assert [c.out_channels for c in convs] == [64, 128, 128, 256, 256, 512, 512]
    assert sum(c.weight.numel() for c in convs) == 4_649_664
    assert convs[0].kernel_size == (5, 5) and all(c.kernel_size == (3, 3) for c in convs[1:])
    assert all(c.bias is None for c in convs)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_width_scales_every_layer_and_small_inputs_run():
    net = BasicNet(num_classes=10, in_channels=1, width=0.125)
    assert [b.conv.out_channels for _, b in conv_blocks(net)] == [8, 16, 16, 32, 32, 64, 64]
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("name, n_conv", [("vgg11", 8), ("vgg16", 13)])
def test_vgg_with_bn(name, n_conv):
    net = build_model(ModelConfig(name=name, width=0.125), num_classes=100, in_channels=3)
    assert len(list(conv_blocks(net))) == n_conv
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_bn_init_and_leaky_relu():
    cfg = ModelConfig(width=0.125, gamma_init=0.5, beta_init=-0.1, activation="leaky_relu", negative_slope=0.1)
    net = build_model(cfg, num_classes=10, in_channels=3)
    for _, block in conv_blocks(net):
        assert torch.all(block.bn.weight == 0.5) and torch.all(block.bn.bias == -0.1)
        assert isinstance(block.act, torch.nn.LeakyReLU) and block.act.negative_slope == 0.1
