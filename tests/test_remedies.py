"""Remedies for collapsed filters: config rewrites, revival, the psBN reading, and real 2-epoch runs."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsity_core import TrialConfig, train
from sparsity_core.config import REMEDY_NAMES, TrainConfig
from sparsity_core.models import BasicNet, conv_blocks
from sparsity_core.optim import OPTIMIZERS, build_optimizer
from sparsity_core.packed import can_pack
from sparsity_core.prune import conv_weight_count, prune_dead
from sparsity_core.remedies import (
    PSBN_SHIFT,
    REMEDIES,
    PsbnRemedy,
    Remedy,
    ReviveRemedy,
    ShiftCompensatedBN,
    configured,
    revive_dead_filters,
)


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return BasicNet(num_classes=10, in_channels=3, width=0.125)


def _batch(n: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _steps(model: nn.Module, optimizer: torch.optim.Optimizer, n: int = 2) -> None:
    x, y = _batch()
    for _ in range(n):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


# --- configure ----------------------------------------------------------------------------------


def test_registry_covers_every_remedy_name():
    assert set(REMEDIES) == set(REMEDY_NAMES)


def test_a_remedy_packs_when_it_only_sets_settings():
    def trials(remedy: str) -> list[TrialConfig]:
        return [TrialConfig.model_validate({"train": {"remedy": remedy}, "seed": seed}) for seed in (0, 1)]

    assert {name: can_pack(trials(name)) is None for name in REMEDY_NAMES} == {
        "none": True, "leaky_relu": True, "gamma_lr_scale": True, "revive": False, "psbn": False}


def test_leaky_relu_keeps_the_configured_slope():
    cfg = TrialConfig.model_validate({"model": {"negative_slope": 0.2}, "train": {"remedy": "leaky_relu"}})
    run = cfg.as_trained()
    assert run.model.activation == "leaky_relu" and run.model.negative_slope == 0.2
    assert run.train == cfg.train and run.dataset == cfg.dataset
    assert cfg.model.activation == "relu"  # the original is untouched
    assert configured(cfg)[1] == run


def test_gamma_lr_scale_is_the_papers_unless_set():
    cfg = TrialConfig.model_validate({"train": {"remedy": "gamma_lr_scale"}})
    assert cfg.as_trained().train.gamma_lr_scale == 0.1
    assert cfg.as_trained().trial_id != cfg.trial_id  # a row keeps the asked config's id beside these settings
    own = TrialConfig.model_validate({"train": {"remedy": "gamma_lr_scale", "gamma_lr_scale": 0.5}})
    assert own.as_trained().train.gamma_lr_scale == 0.5


def test_the_remedies_that_only_set_settings_are_declared_with_the_config():
    from sparsity_core.config import MODEL_REMEDIES, REMEDY_SETTINGS

    # A remedy that only sets settings has no hook of its own: its settings say all of what ran.
    cfg = TrialConfig()
    assert {name for name, build in REMEDIES.items() if type(build(cfg)) is Remedy} == {"none", *REMEDY_SETTINGS}
    assert set(MODEL_REMEDIES) == set(REMEDIES) - {"none", *REMEDY_SETTINGS}


# --- revive -------------------------------------------------------------------------------------

PLANTED = {"C2": {0: 0.0, 3: -2e-4}, "C6": {5: 5e-4}}  # dead by gamma; C6[6] = 2e-3 stays alive
EXPECTED = {"C1": 0, "C2": 2, "C3": 0, "C4": 0, "C5": 0, "C6": 1, "C7": 0}


def _planted_with_state(optimizer_name: str) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = _net()
    optimizer = build_optimizer(model, TrainConfig(optimizer=optimizer_name, reg="l2", strength=1e-3))
    _steps(model, optimizer)  # non-zero optimizer state everywhere
    blocks = dict(conv_blocks(model))
    with torch.no_grad():
        for name, filters in PLANTED.items():
            for i, gamma in filters.items():
                blocks[name].bn.weight[i] = gamma
                blocks[name].bn.bias[i] = -0.3
        blocks["C6"].bn.weight[6] = 2e-3
    return model, optimizer


@pytest.mark.parametrize("optimizer_name", sorted(OPTIMIZERS))
def test_revival_reinitialises_exactly_the_dead_filters(optimizer_name):
    model, optimizer = _planted_with_state(optimizer_name)
    before = copy.deepcopy(model.state_dict())
    state_before = copy.deepcopy(optimizer.state_dict()["state"])
    steps = {id(p): s["step"].clone() for p, s in optimizer.state.items() if "step" in s}

    masks = revive_dead_filters(model, optimizer)

    assert {name: int(mask.sum()) for name, mask in masks.items()} == EXPECTED
    gain = nn.init.calculate_gain("relu")
    index = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    for name, block in conv_blocks(model):
        prefix = next(k for k, m in model.named_modules() if m is block)
        dead = torch.zeros(block.bn.num_features, dtype=torch.bool)
        dead[list(PLANTED.get(name, {}))] = True
        # Every other filter is bit-identical: weights, BN parameters, running statistics.
        for key in ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
            new, old = model.state_dict()[f"{prefix}.{key}"], before[f"{prefix}.{key}"]
            assert torch.equal(new[~dead], old[~dead]), (name, key)
        w = block.conv.weight
        fan_in, fan_out = w[0].numel(), w.shape[0] * w[0, 0].numel()
        bound = gain * (6 / (fan_in + fan_out)) ** 0.5
        assert torch.all(w[dead].abs() <= bound)
        if dead.any():
            assert not torch.equal(w[dead], before[f"{prefix}.conv.weight"][dead])
        assert torch.all(block.bn.weight[dead] == 1) and torch.all(block.bn.bias[dead] == 0)
        assert torch.all(block.bn.running_mean[dead] == 0) and torch.all(block.bn.running_var[dead] == 1)
        # Optimizer state: the dead rows restart from 0, the others and `step` are untouched.
        for param in (block.conv.weight, block.bn.weight, block.bn.bias):
            new_state, old_state = optimizer.state[param], state_before[index[id(param)]]
            shaped = [k for k, v in new_state.items() if isinstance(v, torch.Tensor) and v.shape == param.shape]
            assert shaped, f"{optimizer_name} keeps per-element state"
            for key in shaped:
                assert torch.all(new_state[key][dead] == 0), (name, key)
                assert torch.equal(new_state[key][~dead], old_state[key][~dead]), (name, key)
            if id(param) in steps:
                assert torch.equal(new_state["step"], steps[id(param)])


def test_revival_resets_adagrad_sum_to_its_initial_value():
    model = _net()
    optimizer = torch.optim.Adagrad(model.parameters(), lr=1e-2, initial_accumulator_value=0.1)
    _steps(model, optimizer)
    block = dict(conv_blocks(model))["C3"]
    with torch.no_grad():
        block.bn.weight[2] = 0.0
    old = optimizer.state[block.conv.weight]["sum"].clone()
    revive_dead_filters(model, optimizer)
    new = optimizer.state[block.conv.weight]["sum"]
    assert torch.all(new[2] == 0.1) and torch.equal(new[:2], old[:2]) and torch.equal(new[3:], old[3:])


def test_revive_acts_every_k_epochs_with_every_layer_counted():
    model, optimizer = _planted_with_state("adam")
    remedy = ReviveRemedy(every=2, last=6)
    assert remedy.after_epoch(model, optimizer, 1, None) is None
    assert remedy.after_epoch(model, optimizer, 2, None) == EXPECTED
    assert remedy.after_epoch(model, optimizer, 4, None) == dict.fromkeys(EXPECTED, 0)
    assert remedy.after_epoch(model, optimizer, 6, None) is None  # the last epoch: left as trained


# --- psBN ---------------------------------------------------------------------------------------


def _psbn_net() -> nn.Module:
    return PsbnRemedy(every=1, last=3).prepare_model(_net())


def test_psbn_before_any_shift_is_bn_then_relu():
    plain = _net()
    psbn = PsbnRemedy(every=1, last=3).prepare_model(copy.deepcopy(plain))
    x, _ = _batch()
    for mode in (True, False):
        assert torch.allclose(plain.train(mode)(x), psbn.train(mode)(x), atol=1e-6, rtol=0)
    assert all(isinstance(b.bn, ShiftCompensatedBN) and isinstance(b.act, nn.Identity) for _, b in conv_blocks(psbn))
    # The optimizer still finds gamma and beta as BN parameters.
    groups = {g["name"]: g["params"] for g in build_optimizer(psbn, TrainConfig()).param_groups}
    assert len(groups["gamma"]) == len(groups["beta"]) == 7


def test_psbn_shift_preserves_the_function_in_both_modes():
    model = _psbn_net()
    x, _ = _batch(16)
    with torch.no_grad():
        for _ in range(3):  # non-trivial running statistics
            model.train()(x + 0.3 * torch.randn_like(x))
        blocks = dict(conv_blocks(model))
        for name, gammas in {"C2": [0.0, 5e-4, -9e-4], "C5": [1e-4], "C7": [0.0]}.items():
            for i, gamma in enumerate(gammas):
                blocks[name].bn.weight[i] = gamma
                blocks[name].bn.bias[i] = -0.2 * (i + 1)
        blocks["C3"].bn.weight[0] = 1e-4  # dead by gamma but beta > 0: trainable, left alone
        blocks["C3"].bn.bias[0] = 0.1
        eval_before = model.eval()(x)
        train_before = copy.deepcopy(model).train()(x)
        counts = PsbnRemedy(every=1, last=3).after_epoch(model, None, 1, None)
        eval_after = model.eval()(x)
        train_after = model.train()(x)
    assert counts == {"C1": 0, "C2": 3, "C3": 0, "C4": 0, "C5": 1, "C6": 0, "C7": 1}
    assert torch.allclose(eval_before, eval_after, atol=1e-6, rtol=0)
    assert torch.allclose(train_before, train_after, atol=1e-6, rtol=0)
    c2 = blocks["C2"].bn
    assert torch.equal(c2.shift[:3], torch.full((3,), PSBN_SHIFT)) and torch.all(c2.shift[3:] == 0)
    assert torch.all(c2.bias[:3] == 0) and torch.equal(c2.weight[:3], c2.frozen_weight[:3])
    assert blocks["C3"].bn.shift[0] == 0
    # A shifted filter is not shifted again.
    assert PsbnRemedy(every=1, last=3).after_epoch(model, None, 2, None) == dict.fromkeys(counts, 0)


def _collapsed_pair() -> tuple[nn.Module, nn.Module]:
    """conv -> BN -> ReLU with filter 0 collapsed (gamma 0, beta < 0), and the same as psBN."""
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight[0], bn.bias[0] = 0.0, -0.5
    plain = nn.Sequential(conv, bn, nn.ReLU())
    psbn = nn.Sequential(copy.deepcopy(conv), ShiftCompensatedBN.wrap(bn, nn.ReLU()))
    return plain, psbn


def _grads(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    (model(x) * target).sum().backward()
    conv, bn = model[0], model[1]
    return {"conv": conv.weight.grad[0], "gamma": bn.weight.grad[0], "beta": bn.bias.grad[0]}


def test_psbn_shift_lets_gradient_reach_a_collapsed_filter():
    plain, psbn = _collapsed_pair()
    x = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    target = torch.randn(8, 4, 6, 6, generator=torch.Generator().manual_seed(3))
    for model in (plain, psbn):
        assert all(torch.all(g == 0) for g in _grads(model, x, target).values())
    assert psbn[1].shift_collapsed_() == 1
    after = _grads(psbn, x, target)
    assert after["gamma"] != 0 and after["beta"] != 0
    # At the shift the output does not depend on the conv weights; once gamma moves, it does.
    for model in (plain, psbn):
        _grads(model, x, target)
        torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert torch.any(_grads(psbn, x, target)["conv"] != 0)
    assert all(torch.all(g == 0) for g in _grads(plain, x, target).values())


def test_psbn_state_round_trips_and_prunes():
    _, psbn = _collapsed_pair()
    bn = psbn[1]
    with torch.no_grad():
        for _ in range(2):
            psbn.train()(torch.randn(8, 3, 6, 6))
    bn.shift_collapsed_()
    x = torch.randn(4, 3, 6, 6)
    psbn.eval()
    fresh = nn.Sequential(copy.deepcopy(psbn[0]), ShiftCompensatedBN(4, nn.ReLU())).eval()
    fresh.load_state_dict(psbn.state_dict())
    assert torch.equal(fresh(x), psbn(x))  # the shifted path is taken after loading too
    z = bn.eval()(torch.zeros(1, 4, 2, 2))
    assert torch.allclose(bn.zero_response(), z[0, :, 0, 0], atol=1e-6, rtol=0)
    keep = torch.tensor([True, False, True, True])
    h = psbn[0](x)
    assert torch.equal(bn.select(keep).eval()(h[:, keep]), bn(h)[:, keep])


def test_pruning_a_shifted_psbn_model_keeps_its_eval_function():
    model = _psbn_net()
    x, _ = _batch(16)
    with torch.no_grad():
        for _ in range(3):
            model.train()(x + 0.3 * torch.randn_like(x))
        blocks = dict(conv_blocks(model))
        blocks["C2"].bn.weight[:2] = 0.0  # collapsed: shifted, then removed (output 0)
        blocks["C2"].bn.bias[:2] = -0.3
        blocks["C4"].bn.weight[2] = 0.0  # dead by gamma with beta > 0: a constant 0.2, folded on
        blocks["C4"].bn.bias[2] = 0.2
    assert PsbnRemedy(every=1, last=3).after_epoch(model, None, 1, None)["C2"] == 2
    pruned = prune_dead(model).eval()
    assert conv_weight_count(pruned) < conv_weight_count(model)
    assert all(isinstance(b.bn, ShiftCompensatedBN) for _, b in conv_blocks(pruned))
    with torch.no_grad():
        assert torch.allclose(pruned(x), model.eval()(x), atol=1e-5, rtol=0)


# --- real runs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("remedy", REMEDY_NAMES)
def test_two_epoch_run_with_each_remedy(remedy):
    cfg = TrialConfig.model_validate(
        {"dataset": {"name": "synthetic"}, "model": {"width": 0.125},
         "train": {"epochs": 2, "lr_steps": [1], "remedy": remedy, "revive_every": 1, "strength": 1e-3,
                   "reg": "l2"}, "device": "cpu"}
    )
    result = train(cfg)
    assert result.status == "ok" and [m.epoch for m in result.history] == [1, 2]
    first, last = result.history
    assert all((layer.revived is not None) == (remedy in ("revive", "psbn")) for layer in first.layers)
    assert all(layer.revived is None for layer in last.layers)  # no remedy after the last epoch
    blocks = [b for _, b in conv_blocks(result.model)]
    assert all(isinstance(b.bn, ShiftCompensatedBN) == (remedy == "psbn") for b in blocks)
    assert all(isinstance(b.act, nn.LeakyReLU) == (remedy == "leaky_relu") for b in blocks)


# --- recovered by what the filter does ----------------------------------------------------------


def _fitted(remedy) -> tuple[nn.Module, TrialConfig, object]:
    """A 1/8-width BasicNet fitted for a few epochs on synthetic data (prepared for `remedy`), its
    one-epoch config (so epoch 1 is the last: the end-of-training measurements run) and the data."""
    from sparsity_core.data import BatchLoader, load_dataset

    cfg = TrialConfig.model_validate({"dataset": {"name": "synthetic", "n_train": 512, "n_test": 128},
                                      "model": {"width": 0.125}, "train": {"epochs": 1, "lr_steps": []},
                                      "device": "cpu"})
    data = load_dataset(cfg.dataset, torch.device("cpu"))
    model = remedy.prepare_model(_net())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        for x, y in BatchLoader(data, "train", 64, shuffle=True, flip=False, generator=g):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    return model, cfg, data


def _recovery(model: nn.Module, cfg: TrialConfig, data, remedy) -> tuple[int, int, int]:
    """(remedied, remedied_alive, recovered) as a trial's last epoch measures them."""
    from sparsity_core.measure import measure_epoch

    final = measure_epoch(model, cfg, data, 1, 1e-3, 0.1, False, remedied=remedy.acted_on(model))
    return final.remedied, final.remedied_alive, final.recovered


def test_a_shifted_filter_is_recovered_only_when_it_does_something():
    """A collapsed C5 filter, shifted by psBN. One Adam step (~lr = 2e-3 on its gamma, whatever the
    size of its gradient) lifts it past both of the paper's thresholds while its output stays all but
    constant: alive, not recovered. Brought to its layer's scale, as real gradient would, it works."""
    remedy = PsbnRemedy(every=1, last=3)
    model, cfg, data = _fitted(remedy)
    bn = dict(conv_blocks(model))["C5"].bn
    with torch.no_grad():
        bn.weight[0], bn.bias[0] = 0.0, -0.5
    assert remedy.after_epoch(model, None, 1, None)["C5"] == 1
    assert _recovery(model, cfg, data, remedy) == (1, 0, 0)  # shifted, still dead by gamma
    with torch.no_grad():
        bn.weight[0] += 2e-3
    assert _recovery(model, cfg, data, remedy) == (1, 1, 0)  # alive by the thresholds, functionally constant
    with torch.no_grad():
        bn.weight[0] = bn.weight[1:].abs().median()
    assert _recovery(model, cfg, data, remedy) == (1, 1, 1)


def test_a_revived_filter_nobody_listens_to_is_not_recovered():
    """Revived filters vary (fresh weights, gamma 1); one whose channel the next layer's weights
    ignore (decayed to 0 while it was dead) does not change the loss, so it is not recovered."""
    remedy = ReviveRemedy(every=1, last=3)
    model, cfg, data = _fitted(remedy)
    blocks = dict(conv_blocks(model))
    optimizer = build_optimizer(model, TrainConfig())
    with torch.no_grad():
        blocks["C4"].bn.weight[:2] = 0.0
        blocks["C5"].conv.weight[:, 1] = 0.0  # filter 1's output goes nowhere
    assert remedy.after_epoch(model, optimizer, 1, None)["C4"] == 2
    assert remedy.acted_on(model)["C4"][:2].tolist() == [True, True]
    assert _recovery(model, cfg, data, remedy) == (2, 2, 1)
    # the masks survive a checkpoint
    restored = ReviveRemedy(every=1, last=3)
    restored.load_state_dict(copy.deepcopy(remedy.state_dict()))
    assert all(torch.equal(a, b) for a, b in zip(restored.acted_on(model).values(), remedy.acted_on(model).values()))
