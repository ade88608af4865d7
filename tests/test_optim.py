import pytest
import torch

from sparsity_core.config import OPTIMIZER_NAMES, REGULARIZER_NAMES, TrainConfig
from sparsity_core.models import BasicNet, conv_blocks
from sparsity_core.optim import OPTIMIZERS, REGULARIZERS, build_optimizer, lr_factor, regularize_, set_lr
from sparsity_core.loop import train


@pytest.mark.parametrize("optimizer", OPTIMIZER_NAMES)
@pytest.mark.parametrize("reg", REGULARIZER_NAMES)
def test_every_optimizer_and_regularizer_trains(tiny, optimizer, reg):
    result = train(tiny(optimizer=optimizer, reg=reg, strength=1e-4, epochs=1, lr_steps=[]))
    assert result.status == "ok"
    assert result.final.epoch == 1
    assert result.final.train_loss > 0


def test_registries_cover_every_name():
    assert tuple(OPTIMIZERS) == OPTIMIZER_NAMES and tuple(REGULARIZERS) == REGULARIZER_NAMES


def test_paper_base_lrs():
    assert {k: v.lr for k, v in OPTIMIZERS.items()} == {
        "sgd": 0.1, "adam": 1e-3, "amsgrad": 1e-3, "adamax": 2e-3, "rmsprop": 1e-3, "adagrad": 1e-2, "adadelta": 1.0,
    }


def _one_step(reg: str, strength: float) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = BasicNet(num_classes=10, in_channels=1, width=0.125)
    cfg = TrainConfig(optimizer="adam", reg=reg, strength=strength)
    opt = build_optimizer(net, cfg)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        regularize_(opt, cfg, 1.0)
        opt.step()
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_l2_and_wd_differ_for_adam():
    plain, l2, wd = _one_step("none", 0.0), _one_step("l2", 1e-2), _one_step("wd", 1e-2)
    key = "features.0.conv.weight"
    assert not torch.allclose(l2[key], wd[key])
    assert not torch.allclose(l2[key], plain[key]) and not torch.allclose(wd[key], plain[key])


def test_wd_is_decoupled_and_schedule_scaled():
    p = torch.nn.Parameter(torch.ones(3))
    net = torch.nn.Module()
    net.p = p
    cfg = TrainConfig(optimizer="sgd", reg="wd", strength=0.1)
    opt = build_optimizer(net, cfg)
    regularize_(opt, cfg, factor=0.5)  # lr_t / lr_base = 0.5 -> p * (1 - 0.1 * 0.5), not times lr
    assert torch.allclose(p.detach(), torch.full((3,), 0.95))


def test_l1_gamma_touches_gamma_grads_only():
    net = BasicNet(num_classes=10, in_channels=1, width=0.125)
    cfg = TrainConfig(optimizer="sgd", reg="l1_gamma", strength=0.5)
    opt = build_optimizer(net, cfg)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    regularize_(opt, cfg, 1.0)
    for _, block in conv_blocks(net):
        assert torch.allclose(block.bn.weight.grad, torch.full_like(block.bn.weight, 0.5))
        assert torch.all(block.bn.bias.grad == 0) and torch.all(block.conv.weight.grad == 0)


def test_gamma_and_beta_lr_scales_reach_their_groups():
    net = BasicNet(num_classes=10, in_channels=1, width=0.125)
    cfg = TrainConfig(optimizer="adam", gamma_lr_scale=0.1, beta_lr_scale=0.5)
    opt = build_optimizer(net, cfg)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["weights"]["lr"] == pytest.approx(1e-3)
    assert groups["gamma"]["lr"] == pytest.approx(1e-4)
    assert groups["beta"]["lr"] == pytest.approx(5e-4)
    gammas = {id(b.bn.weight) for _, b in conv_blocks(net)}
    betas = {id(b.bn.bias) for _, b in conv_blocks(net)}
    assert {id(p) for p in groups["gamma"]["params"]} == gammas
    assert {id(p) for p in groups["beta"]["params"]} == betas
    assert not ({id(p) for p in groups["weights"]["params"]} & (gammas | betas))
    set_lr(opt, 0.1)
    assert groups["gamma"]["lr"] == pytest.approx(1e-5)


def test_step_schedule():
    cfg = TrainConfig(epochs=325, lr_steps=(250,))
    assert lr_factor(cfg, 0) == 1.0 and lr_factor(cfg, 249) == 1.0
    assert lr_factor(cfg, 250) == pytest.approx(0.1)
