"""Physical filter removal: exact eval equivalence with planted dead filters, counts; the explicit
methods (network slimming, L1-norm) on planted networks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sparsity_core.data import ImageData
from sparsity_core.measure import evaluate, pruned_metrics
from sparsity_core.models import MODELS, BasicNet, ConvNet, conv_blocks
from sparsity_core.prune import (
    ConstConv2d,
    conv_weight_count,
    count_flops,
    dead_keep_masks,
    prune_dead,
    prune_explicit,
    remove_filters,
)
from sparsity_core.sparsity import filter_stats

# Planted dead filters: gamma 0, and betas of both signs. Under ReLU the negative ones output 0;
# the positive ones output a constant that must be folded into the next layer.
PLANT_BETAS = (-0.3, 0.4, 0.25)
PLANT_SKIP = "C3"  # a layer left intact


def _randomized(net: ConvNet, seed: int = 0) -> ConvNet:
    """Non-trivial BN parameters and running statistics, so nothing is exact by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, block in conv_blocks(net):
            bn = block.bn
            n = bn.num_features
            bn.weight.copy_(0.5 + torch.rand(n, generator=g))
            bn.bias.copy_(torch.rand(n, generator=g) - 0.5)
            bn.running_mean.copy_(torch.randn(n, generator=g))
            bn.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
    return net.eval()


def _planted(net: ConvNet) -> ConvNet:
    """The first len(PLANT_BETAS) filters of every layer but PLANT_SKIP dead by gamma."""
    net = _randomized(net)
    with torch.no_grad():
        for name, block in conv_blocks(net):
            if name != PLANT_SKIP:
                k = len(PLANT_BETAS)
                block.bn.weight[:k] = 0.0
                block.bn.bias[:k] = torch.tensor(PLANT_BETAS)
    return net


def _widths(net: nn.Module) -> list[int]:
    return [block.conv.out_channels for _, block in conv_blocks(net)]


def _expected_widths(net: nn.Module) -> list[int]:
    k = len(PLANT_BETAS)
    return [block.conv.out_channels - (0 if name == PLANT_SKIP else k) for name, block in conv_blocks(net)]


CASES = {
    "basicnet-1x8x8": (lambda: BasicNet(num_classes=10, in_channels=1, width=0.125), [(1, 8, 8), (1, 12, 12)]),
    "basicnet-3x32x32": (lambda: BasicNet(num_classes=10, in_channels=3, width=0.125), [(3, 32, 32), (3, 20, 20)]),
    "basicnet-leaky": (lambda: BasicNet(num_classes=10, in_channels=3, width=0.125, activation="leaky_relu",
                                        negative_slope=0.1), [(3, 32, 32)]),
    "vgg11-3x32x32": (lambda: MODELS["vgg11"](num_classes=10, in_channels=3, width=0.125), [(3, 32, 32), (3, 8, 8)]),
}


@pytest.mark.parametrize("case", CASES)
def test_prune_dead_is_eval_equivalent(case):
    build, shapes = CASES[case]
    torch.manual_seed(0)
    net = _planted(build())
    pruned = prune_dead(net)
    assert _widths(pruned) == _expected_widths(net)
    # Every layer after a planted one gets constants to fold (ReLU: the positive betas; leaky ReLU:
    # all), so the exact border treatment is exercised, not bypassed.
    convs = [block.conv for _, block in conv_blocks(pruned)]
    names = [name for name, _ in conv_blocks(net)]
    assert [isinstance(c, ConstConv2d) for c in convs[1:]] == [n != PLANT_SKIP for n in names[:-1]]
    assert not pruned.training
    with torch.no_grad():
        for shape in shapes:
            x = torch.randn(4, *shape)
            torch.testing.assert_close(pruned(x), net(x), atol=1e-5, rtol=0)


def _basicnet_flops(widths: list[int], cin: int, size: int, const_layers: set[int], hidden: int) -> int:
    """2 * multiply-adds of BasicNet's convs, its ConstConv2d ones-map convs and its classifier."""
    kernels = [5, 3, 3, 3, 3, 3, 3]
    pool_after = {1, 3, 5}  # layer indices followed by a 2x2 max-pool
    flops = 0
    for i, (cout, k) in enumerate(zip(widths, kernels, strict=True)):
        flops += 2 * k * k * cin * cout * size * size
        if i in const_layers:
            flops += 2 * k * k * cout * size * size
        if i in pool_after:
            size = -(-size // 2)
        cin = cout
    return flops + 2 * (cin * hidden + hidden * 10)


@pytest.mark.parametrize("cin, size", [(1, 8), (3, 32)])
def test_params_and_flops_drop_by_the_expected_amounts(cin, size):
    torch.manual_seed(0)
    net = _planted(BasicNet(num_classes=10, in_channels=cin, width=0.125))
    pruned = prune_dead(net)
    full_w, pruned_w = _widths(net), _expected_widths(net)
    kernels = [5, 3, 3, 3, 3, 3, 3]

    def conv_weights(widths: list[int]) -> int:
        return sum(k * k * a * b for k, a, b in zip(kernels, [cin, *widths[:-1]], widths, strict=True))

    assert conv_weight_count(net) == conv_weights(full_w) == 72_776 + (cin - 1) * 25 * 8
    assert conv_weight_count(pruned) == conv_weights(pruned_w)
    x = torch.randn(1, cin, size, size)
    hidden = full_w[-1]  # the classifier's hidden width is not pruned
    assert count_flops(net, x) == _basicnet_flops(full_w, cin, size, set(), hidden)
    # ConstConv2d after every planted layer: C2 (after C1), C3 (after C2), C5..C7; not C4 (C3 intact).
    assert count_flops(pruned, x) == _basicnet_flops(pruned_w, cin, size, {1, 2, 4, 5, 6}, hidden)


def test_a_layer_never_loses_its_last_filter():
    torch.manual_seed(0)
    net = _planted(BasicNet(num_classes=10, in_channels=3, width=0.125))
    with torch.no_grad():
        c5 = dict(conv_blocks(net))["C5"].bn
        c5.weight.zero_()
        c5.bias.copy_(torch.linspace(-0.5, 0.5, c5.num_features))
    pruned = prune_dead(net)
    assert _widths(pruned)[4] == 1
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), net(x), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="at least one"):
        remove_filters(net, {"C5": torch.zeros(c5.num_features, dtype=torch.bool)})


def test_pruned_model_round_trips_through_torch_save(tmp_path):
    torch.manual_seed(0)
    net = _planted(BasicNet(num_classes=10, in_channels=3, width=0.125))
    pruned = prune_dead(net)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = pruned(x)
    torch.save(pruned, tmp_path / "model.pt")
    torch.save(pruned.state_dict(), tmp_path / "state.pt")
    whole = torch.load(tmp_path / "model.pt", weights_only=False)
    # The state dict (const_weight buffers included) loads into the same pruned architecture built
    # from another net with the same dead filters.
    torch.manual_seed(1)
    other = prune_dead(_planted(BasicNet(num_classes=10, in_channels=3, width=0.125)))
    other.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(whole(x), expected, atol=0, rtol=0)
        torch.testing.assert_close(other(x), expected, atol=0, rtol=0)


def _tiny_data(net_in: int = 3, size: int = 8, n: int = 64) -> ImageData:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2 * n, net_in, size, size), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (2 * n,), generator=g)
    return ImageData(images[:n], labels[:n], images[n:], labels[n:], 10,
                     torch.full((net_in,), 0.5), torch.full((net_in,), 0.25))


def test_prune_by_activation_removes_exactly_the_never_active_filters():
    torch.manual_seed(0)
    net = _planted(BasicNet(num_classes=10, in_channels=3, width=0.125))
    data = _tiny_data()
    max_act = {name: s.max_act for name, s in filter_stats(net, data, batch_size=32).items()}
    keep = dead_keep_masks(net, by="activation", max_act=max_act)
    for name, mask in keep.items():
        assert torch.equal(mask, max_act[name] >= 1e-12)
        if name != PLANT_SKIP:  # planted with beta -0.3: never active; +0.4 and +0.25: always active
            assert mask[:3].tolist() == [False, True, True]
    pruned = prune_dead(net, by="activation", max_act=max_act)
    x = data.normalize(data.train_x)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), net(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("by", ["gamma", "activation"])
def test_pruned_metrics(by):
    torch.manual_seed(0)
    net = _planted(BasicNet(num_classes=10, in_channels=3, width=0.125))
    data = _tiny_data()
    net.train()
    metrics = pruned_metrics(net, data, eval_batch_size=32, by=by)
    assert net.training  # restored after the eval-mode measurements
    assert metrics.pruned_by == f"dead_{'gamma' if by == 'gamma' else 'act'}" and not metrics.finetuned
    assert metrics.pruned_test_err == metrics.unfinetuned_test_err == metrics.trained_test_err \
        == evaluate(net, data, 32)[1]
    assert 0 < metrics.flops_pruned_pct < 100 and metrics.pruned_speedup > 0
    max_act = {name: st.max_act for name, st in filter_stats(net, data, batch_size=32).items()}
    keep = dead_keep_masks(net, by=by, max_act=max_act)
    removed = sum(int((~mask).sum()) for mask in keep.values())
    assert metrics.filters_removed_pct == pytest.approx(100 * removed / sum(m.numel() for m in keep.values()))
    if by == "gamma":
        pruned = prune_dead(net)
        expected = 100 * (1 - conv_weight_count(pruned) / conv_weight_count(net))
        assert metrics.conv_params_pruned_pct == pytest.approx(expected)


def _example(cin: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randn(1, cin, size, size, generator=torch.Generator().manual_seed(5))


def test_slimming_removes_the_globally_smallest_gammas():
    torch.manual_seed(0)
    net = _randomized(BasicNet(num_classes=10, in_channels=3, width=0.125))
    gammas = {name: block.bn.weight.detach().abs().clone() for name, block in conv_blocks(net)}
    total = sum(g.numel() for g in gammas.values())  # 232 filters at width 1/8
    pruned, keep = prune_explicit(net, "slimming", 0.4, _example())
    assert sum(_widths(pruned)) == total - round(0.4 * total)
    kept = torch.cat([block.bn.weight.abs() for _, block in conv_blocks(pruned)])
    assert sum(int((g < kept.min()).sum()) for g in gammas.values()) == round(0.4 * total)
    for (name, block), g in zip(conv_blocks(pruned), gammas.values(), strict=True):
        assert torch.equal(block.bn.weight.detach().abs(), g[keep[name]])  # Torch-Pruning's surgery, our masks
    # Near 1 every layer keeps exactly its largest-|gamma| filter.
    slim, _ = prune_explicit(net, "slimming", 0.999, _example())
    assert _widths(slim) == [1] * len(gammas)
    for (_, block), g in zip(conv_blocks(slim), gammas.values(), strict=True):
        assert block.bn.weight.abs().item() == g.max().item()
    assert slim(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_l1norm_removes_the_same_fraction_of_each_layer_by_filter_norm():
    torch.manual_seed(0)
    net = _randomized(BasicNet(num_classes=10, in_channels=3, width=0.125))
    widths = _widths(net)
    pruned, keep = prune_explicit(net, "l1norm", 0.5, _example())
    assert _widths(pruned) == [n - round(0.5 * n) for n in widths]
    # The kept C6 filters are the largest by L1 norm, their inputs those C5 kept.
    full = dict(conv_blocks(net))
    c6_full = full["C6"].conv.weight.abs().sum(dim=(1, 2, 3))
    c6_kept = dict(conv_blocks(pruned))["C6"].conv.weight
    torch.testing.assert_close(c6_kept.abs().sum(dim=(1, 2, 3)).sort().values,
                               full["C6"].conv.weight[:, keep["C5"]].abs().sum(dim=(1, 2, 3))[keep["C6"]].sort().values)
    assert set(c6_full.argsort()[-int(keep["C6"].sum()):].tolist()) == set(keep["C6"].nonzero().flatten().tolist())
    assert pruned.classifier[0].in_features == int(keep["C7"].sum())  # the Linear behind the global pool


def test_explicit_masks_differ_from_the_dead_set():
    """Dead filters (gamma 0) with large weights and weak, live filters (small gamma, small weights):
    slimming takes the dead and then the weak ones, L1-norm the weak ones and not the dead."""
    torch.manual_seed(0)
    net = _randomized(BasicNet(num_classes=10, in_channels=3, width=0.125))
    with torch.no_grad():
        for _, block in conv_blocks(net):
            block.bn.weight[:2] = 0.0  # dead by gamma
            block.conv.weight[:2] *= 10.0  # ... with the layer's largest kernels
            block.bn.weight[2:4] = 0.05  # weak but alive
            block.conv.weight[2:4] *= 0.01  # ... with the smallest kernels
    dead = dead_keep_masks(net)
    n_dead = sum(int((~m).sum()) for m in dead.values())
    slim = prune_explicit(net, "slimming", 0.25, _example())[1]
    l1 = prune_explicit(net, "l1norm", 0.25, _example())[1]
    for name, mask in dead.items():
        assert mask[:2].tolist() == [False, False] and mask[2:].all()
        assert not slim[name][:2].any()  # slimming takes every dead filter ...
        assert l1[name][:2].all()  # ... L1-norm none: their kernels are the largest
    assert sum(int((~m).sum()) for m in slim.values()) == round(0.25 * 232) > n_dead  # ... and more than those
    assert not all(torch.equal(slim[n], dead[n]) for n in dead) and not all(torch.equal(l1[n], dead[n]) for n in dead)
    assert all(not l1[name][2:4].any() for name in ("C3", "C4", "C5", "C6", "C7"))  # the weak ones go first


def test_explicit_pruning_refuses_what_it_cannot_prune():
    net = BasicNet(num_classes=10, in_channels=3, width=0.125)
    with pytest.raises(ValueError, match="unknown explicit pruning method"):
        prune_explicit(net, "random", 0.5, _example())[1]
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        prune_explicit(net, "l1norm", 1.0, _example())
    with pytest.raises(TypeError, match="ConvNet"):
        prune_explicit(nn.Sequential(nn.Conv2d(3, 4, 3)), "l1norm", 0.5, _example())


def test_remove_filters_leaves_the_input_model_alone():
    torch.manual_seed(0)
    net = _planted(BasicNet(num_classes=10, in_channels=1, width=0.125))
    before = copy.deepcopy(net.state_dict())
    prune_dead(net)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_psbn_blocks_prune_through_their_own_hooks():
    # The psBN remedy's BN module keeps the activation inside and extra per-filter buffers; it
    # provides zero_response() and select(keep), which remove_filters uses.
    from sparsity_core.remedies import ShiftCompensatedBN

    torch.manual_seed(0)
    net = _planted(BasicNet(num_classes=10, in_channels=3, width=0.125))
    with torch.no_grad():
        for _, block in conv_blocks(net):
            block.bn = ShiftCompensatedBN.wrap(block.bn, block.act)
            block.act = nn.Identity()
            block.bn.shift_collapsed_()  # the planted filters with beta <= 0 become shifted
    net.eval()
    pruned = prune_dead(net)
    assert all(isinstance(block.bn, ShiftCompensatedBN) for _, block in conv_blocks(pruned))
    assert _widths(pruned) == _expected_widths(net)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), net(x), atol=1e-5, rtol=0)
