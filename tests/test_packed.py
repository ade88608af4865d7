"""Packed trials (sparsity_core.packed): N trials in one network train as they do alone.

The end-to-end comparisons use 16x16 synthetic images. At the native 8x8, BasicNet's C7 sees a 1x1
map, BN there makes some earlier gradients sum to zero up to rounding, and adaptive optimizers turn
that rounding noise into whole steps: a solo run then moves by ~1e-3 in loss from a change of
thread count alone, and no repacking can match it closer than that. At 16x16 a solo run is
reproducible to ~1e-7 across thread counts, and so is a packed trial against its solo run.
"""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from sparsity_core import EpochMetrics, TrialConfig, train, train_packed
from sparsity_core.config import OPTIMIZER_NAMES, REGULARIZER_NAMES, TrainConfig
from sparsity_core.models import BasicNet, ConvNet
from sparsity_core.optim import build_optimizer, regularize_, set_lr
from sparsity_core.packed import PackedConvNet, PackedOptimizer, can_pack, pack_key


def _trial(seed: int = 0, gamma_init: float = 1.0, epochs: int = 2, **train_settings) -> TrialConfig:
    return TrialConfig.model_validate({
        "dataset": {"name": "synthetic", "n_train": 256, "n_test": 64, "image_size": 16},
        "model": {"width": 0.125, "gamma_init": gamma_init},
        "train": {"epochs": epochs, "lr_steps": [1], "batch_size": 64, **train_settings},
        "seed": seed, "device": "cpu",
    })


def _nets(n: int) -> list[ConvNet]:
    nets = []
    for seed in range(n):
        torch.manual_seed(seed)
        nets.append(BasicNet(num_classes=10, in_channels=3, width=0.125, gamma_init=1.0 + 0.25 * seed))
    return nets


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_packed_forward_equals_each_solo_forward(mode):
    nets = _nets(3)
    packed = PackedConvNet(nets)
    for net in [*nets, packed]:
        net.train(mode == "train")
    x = torch.randn(16, 3 * 3, 16, 16)
    out = packed(x)
    assert out.shape == (16, 3, 10)
    for i, net in enumerate(nets):
        torch.testing.assert_close(out[:, i], net(x[:, 3 * i : 3 * (i + 1)]), rtol=1e-5, atol=1e-5)
    if mode == "train":  # the BN running statistics moved per trial, as each solo BN's did
        for i, net in enumerate(nets):
            for (name, a), b in zip(packed.unpack(i).state_dict().items(), net.state_dict().values()):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_unpack_returns_each_trial_exactly():
    nets = _nets(3)
    packed = PackedConvNet(nets)
    assert sum(p.numel() for p in packed.parameters()) == sum(p.numel() for net in nets for p in net.parameters())
    for i, net in enumerate(nets):
        solo = packed.unpack(i)
        assert type(solo) is ConvNet and repr(solo) == repr(net)
        for (name, a), (_, b) in zip(solo.state_dict().items(), net.state_dict().items(), strict=True):
            assert torch.equal(a, b), name
    with pytest.raises(IndexError):
        packed.unpack(3)


def test_packing_refuses_different_architectures():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="architecture"):
        PackedConvNet([BasicNet(width=0.125), BasicNet(width=0.25)])


# The packed update is torch's at lr=1, times the LR: one rounding from torch's own, of the parameter
# (float32 eps 1.2e-7) or of an update (up to ~1 in RMSprop's first steps).
ULPS = {"rtol": 2.4e-7, "atol": 1e-7}


@pytest.mark.parametrize("optimizer", OPTIMIZER_NAMES)
def test_packed_optimizer_step_is_torchs_step_per_trial(optimizer):
    """Given the same gradients, each trial's slice moves as build_optimizer + regularize_ move its
    solo model, up to one rounding: own LR, gamma/beta scales, regularizer and strength, across an
    LR step."""
    nets = _nets(len(REGULARIZER_NAMES))
    packed = PackedConvNet(nets)
    cfgs = [TrainConfig(optimizer=optimizer, reg=reg, strength=10.0 ** -(2 + i), lr=None if i == 0 else 0.01 * i,
                        gamma_lr_scale=0.1 * (i + 1), beta_lr_scale=1.0 / (i + 1))
            for i, reg in enumerate(REGULARIZER_NAMES)]
    packed_opt = PackedOptimizer(packed, cfgs)
    solo_opts = [build_optimizer(net, cfg) for net, cfg in zip(nets, cfgs)]
    g = torch.Generator().manual_seed(0)
    for step in range(4):
        factor = 1.0 if step < 2 else 0.1
        packed_opt.set_lr_factors([factor] * len(cfgs))
        grads = {name: torch.randn(p.shape, generator=g) for name, p in packed.net.named_parameters()}
        for name, p in packed.net.named_parameters():
            p.grad = grads[name].clone()  # the step writes to it (l1_gamma), as regularize_ does
        packed_opt.step()
        for i, (net, opt, cfg) in enumerate(zip(nets, solo_opts, cfgs)):
            set_lr(opt, factor)
            for name, p in net.named_parameters():
                p.grad = grads[name].unflatten(0, (len(cfgs), -1))[i].clone()
            regularize_(opt, cfg, factor)
            opt.step()
    for i, net in enumerate(nets):
        for name, p in net.named_parameters():
            mine = packed.net.get_parameter(name).detach().unflatten(0, (len(cfgs), -1))[i]
            torch.testing.assert_close(mine, p.detach(), **ULPS, msg=lambda m: f"{i} {name}: {m}")


def _assert_same_run(packed, solo):
    assert packed.status == solo.status
    assert [m.epoch for m in packed.history] == [m.epoch for m in solo.history]
    for a, b in zip(packed.history, solo.history):
        assert a.lr == b.lr
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-4)
        assert a.test_loss == pytest.approx(b.test_loss, rel=1e-4)
        assert a.test_err == b.test_err
        assert a.dead_gamma_pct == b.dead_gamma_pct
        assert [layer.dead_gamma for layer in a.layers] == [layer.dead_gamma for layer in b.layers]
        assert (a.filters is None) == (b.filters is None) and (a.pruned is None) == (b.pruned is None)
    assert packed.final.pruned.pruned_test_err == solo.final.pruned.pruned_test_err
    assert packed.final.dead_act_pct == solo.final.dead_act_pct


PACKS = {
    "adam+l2": [_trial(0, optimizer="adam", reg="l2", strength=1e-3),
                _trial(1, optimizer="adam", reg="l2", strength=1e-2, lr=5e-4, gamma_lr_scale=0.1),
                _trial(2, 0.5, optimizer="adam", reg="l2", strength=1e-4, lr_steps=[])],
    "sgd+wd": [_trial(0, optimizer="sgd", reg="wd", strength=1e-3, lr=0.05),
               _trial(1, optimizer="sgd", reg="wd", strength=1e-2, lr=0.02, gamma_lr_scale=0.1),
               _trial(2, 0.5, optimizer="sgd", reg="wd", strength=1e-4, lr=0.01)],
    # pack-mates may differ in regularizer and LR schedule too
    "amsgrad, mixed regularizers": [
        _trial(0, optimizer="amsgrad", reg="l2", strength=1e-3),
        _trial(1, optimizer="amsgrad", reg="wd", strength=1e-2, lr=5e-4, beta_lr_scale=0.1, lr_steps=[]),
        _trial(2, 0.5, optimizer="amsgrad", reg="l1_gamma", strength=1e-3, lr_decay=0.5)],
}


@pytest.mark.parametrize("pack", PACKS)
def test_packed_trial_equals_the_same_trial_trained_alone(pack):
    cfgs = PACKS[pack]
    assert can_pack(cfgs) is None
    reported = []
    results = train_packed(cfgs, lambda metrics, state: reported.extend((i, m.epoch) for i, m in metrics.items()))
    assert reported == [(i, e) for e in (1, 2) for i in range(3)]
    for cfg, packed in zip(cfgs, results):
        assert packed.config == cfg and type(packed.model) is ConvNet
        _assert_same_run(packed, train(cfg))


def test_a_diverging_trial_leaves_its_pack_mates_untouched():
    cfgs = [_trial(0, epochs=3, optimizer="sgd", lr=1e8),
            _trial(1, epochs=3, optimizer="sgd", reg="wd", strength=1e-2, lr=0.02),
            _trial(2, epochs=3, optimizer="sgd", reg="wd", strength=1e-4, lr=0.01)]
    reported = []
    results = train_packed(cfgs, lambda metrics, state: reported.extend((i, m.epoch, m.diverged)
                                                                        for i, m in metrics.items()))
    solo = [train(cfg) for cfg in cfgs]
    diverged, alone = results[0], solo[0]
    assert diverged.status == alone.status == "diverged" and "epoch" in diverged.message
    assert [m.epoch for m in diverged.history] == [m.epoch for m in alone.history]
    assert diverged.final.diverged and not math.isfinite(diverged.final.train_loss)
    assert [r for r in reported if r[0] == 0] == [(0, m.epoch, m.diverged) for m in alone.history]
    for packed, alone in zip(results[1:], solo[1:]):
        assert packed.status == "ok" and len(packed.history) == 3
        _assert_same_run(packed, alone)


RESUMABLE = {
    "adam": [_trial(0, epochs=4, optimizer="adam", reg="l2", strength=1e-3),
             _trial(1, 0.5, epochs=4, optimizer="adam", reg="wd", strength=1e-2, lr=5e-4, lr_steps=[3])],
    # trial 0 diverges in epoch 1, before the checkpoint: it is reported again on resume
    "sgd, one diverged": [_trial(0, epochs=4, optimizer="sgd", lr=1e8),
                          _trial(1, epochs=4, optimizer="sgd", reg="wd", strength=1e-2, lr=0.02, gamma_lr_scale=0.1),
                          _trial(2, 0.5, epochs=4, optimizer="sgd", reg="l1_gamma", strength=1e-4, lr=0.01)],
}


def _untimed(metrics: dict[int, EpochMetrics]) -> dict[int, EpochMetrics]:
    """The metrics without the one timing in them (pruned_speedup), which no rerun repeats."""
    return {i: m if m.pruned is None else dataclasses.replace(m, pruned=dataclasses.replace(m.pruned, pruned_speedup=0))
            for i, m in metrics.items()}


@pytest.mark.parametrize("pack", RESUMABLE)
def test_a_pack_resumed_from_its_checkpoint_ends_as_an_uninterrupted_pack(pack):
    cfgs = RESUMABLE[pack]
    states, full_reports = {}, []

    def record(metrics, state):
        full_reports.append(_untimed(metrics))
        states[next(iter(metrics.values())).epoch] = state

    full = train_packed(cfgs, record, checkpoint_every=2)
    assert states[1] is None and states[2] is not None and states[4] is not None
    resumed_reports = []
    resumed = train_packed(cfgs, lambda metrics, state: resumed_reports.append(_untimed(metrics)), resume=states[2])
    ended = {i: r.final for i, r in enumerate(full) if r.final.epoch <= 2}
    assert resumed_reports == [ended] * bool(ended) + full_reports[2:]  # every metric equal, bit for bit
    for a, b in zip(full, resumed):
        assert (a.status, a.message, _untimed({0: a.final})) == (b.status, b.message, _untimed({0: b.final}))
        if a.status == "ok":
            for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
                assert torch.equal(p, q), name


@pytest.mark.integration  # compiling takes a while on 2 CPU cores
def test_a_compiled_pack_matches_the_eager_pack():
    # Two steps of SGD: its update is proportional to the gradient, where Adam's first step turns
    # float noise into whole steps. Compiled kernels round differently: ~1e-4 in the first conv's
    # gradients here, solo or packed, ~5e-5 in its weights after these two steps.
    cfgs = [_trial(0, epochs=1, batch_size=128, optimizer="sgd", reg="wd", strength=1e-3, lr=0.05),
            _trial(1, 0.5, epochs=1, batch_size=128, optimizer="sgd", reg="l2", strength=1e-3, lr=0.02)]
    torch.compiler.reset()
    compiled = train_packed([c.model_copy(update={"train": c.train.model_copy(update={"compile": True})})
                             for c in cfgs])
    eager = train_packed(cfgs)
    for a, b in zip(compiled, eager):
        assert a.status == b.status == "ok"
        assert a.final.train_loss == pytest.approx(b.final.train_loss, rel=1e-5)
        assert a.final.test_loss == pytest.approx(b.final.test_loss, rel=1e-4)
        for (name, p), q in zip(b.model.state_dict().items(), a.model.state_dict().values()):
            torch.testing.assert_close(q, p, rtol=1e-3, atol=2e-4, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize(("change", "reason"), [
    ({"model": {"width": 0.25}}, "width differs"),
    ({"train": {"optimizer": "sgd"}}, "optimizer differs"),
    ({"train": {"batch_size": 32}}, "batch_size differs"),
    ({"train": {"epochs": 3}}, "epochs differs"),
    ({"dataset": {"n_train": 128}}, "n_train differs"),
    ({"model": {"activation": "leaky_relu"}}, "activation differs"),
    ({"train": {"remedy": "leaky_relu"}}, "activation differs"),  # what the remedy trains is compared
    ({"train": {"remedy": "revive"}}, "remedy 'revive'"),
    ({"train": {"compile": True}}, "compile"),
    ({"train": {"precision": "bf16"}}, "precision differs"),
])
def test_can_pack_names_what_stands_in_the_way(change, reason):
    base = _trial().model_dump()
    for section, settings in change.items():
        base[section].update(settings)
    other = TrialConfig.model_validate(base)
    assert reason in can_pack([_trial(), other])
    with pytest.raises(ValueError, match="cannot pack"):
        train_packed([_trial(), other])


def test_pack_key_groups_exactly_the_trials_that_can_pack():
    trials = [_trial(0), _trial(1, 0.5, lr=1e-2, reg="wd", strength=1e-3, lr_steps=[]), _trial(2, optimizer="sgd"),
              _trial(3, remedy="gamma_lr_scale"), _trial(4, remedy="leaky_relu"), _trial(5, remedy="revive")]
    for a in trials:
        for b in trials:
            same = pack_key(a) is not None and pack_key(a) == pack_key(b)
            assert same == (can_pack([a, b]) is None), (a.train, b.train)
    assert pack_key(trials[-1]) is None


def test_can_pack_accepts_per_trial_settings():
    assert can_pack([]) == "no trials to pack"
    assert can_pack([
        _trial(0),
        _trial(1, 0.5, lr=1e-2, reg="wd", strength=1e-3, gamma_lr_scale=0.1, beta_lr_scale=2.0, lr_steps=[],
               act_every=1, remedy="gamma_lr_scale"),
    ]) is None


def test_packed_loss_gradients_stay_per_trial():
    """A NaN in one trial's parameters reaches none of the others' gradients."""
    nets = _nets(3)
    packed = PackedConvNet(nets)
    with torch.no_grad():
        packed.net.features[0].conv.weight.unflatten(0, (3, -1))[0].fill_(math.nan)
    x, y = torch.randn(16, 9, 16, 16), torch.randint(0, 10, (16, 3))
    losses = F.cross_entropy(packed(x).transpose(1, 2), y, reduction="none").mean(dim=0)
    assert losses[0].isnan() and losses[1:].isfinite().all()
    torch.where(losses.isfinite(), losses, 0.0).sum().backward()
    for name, p in packed.net.named_parameters():
        assert p.grad.unflatten(0, (3, -1))[1:].isfinite().all(), name
