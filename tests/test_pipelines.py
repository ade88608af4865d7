"""Explicit pruning pipelines as trial settings: settings refused before anything runs, each method end
to end on a tiny synthetic trial (train, prune, fine-tune in the one loop, measure), fine-tuning
recovering what pruning lost, resuming mid-fine-tuning, and what a pack can hold."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from sparsity_core import TrialConfig, train
from sparsity_core.config import FINETUNING, PRUNE_METHOD_NAMES
from sparsity_core.packed import can_pack, pack_key
from sparsity_core.prune import EXPLICIT_METHODS

from .conftest import tiny_config

SLIMMING = {"method": "slimming", "fraction": 0.5}
L1NORM = {"method": "l1norm", "fraction": 0.5}


def _trial(prune: dict, **train_settings) -> TrialConfig:
    reg = "l1_gamma" if prune.get("method") == "slimming" else "l2"
    cfg = tiny_config(epochs=3, lr_steps=[2], reg=reg, strength=1e-3, **train_settings)
    return TrialConfig.model_validate({**cfg.model_dump(), "prune": prune})


def test_every_explicit_method_has_its_surgery_and_its_recipe():
    assert {"none", *EXPLICIT_METHODS} == {"none", *FINETUNING} == set(PRUNE_METHOD_NAMES)


@pytest.mark.parametrize("prune, train_settings, message", [
    ({"method": "slimming", "fraction": 1.0}, {"reg": "l1_gamma"}, "less than 1"),
    ({"method": "l1norm", "fraction": 0.0}, {}, "greater than 0"),
    ({"method": "l1norm"}, {}, "set fraction in (0, 1)"),
    ({"method": "lottery", "fraction": 0.5}, {}, "unknown pruning method 'lottery'"),
    ({"method": "l1norm", "fraction": 0.5, "finetune_epochs": -1}, {}, "greater than or equal to 0"),
    ({"fraction": 0.5}, {}, "method 'none' removes the dead filters"),
    ({"finetune_epochs": 3}, {}, "does not fine-tune"),
    ({"method": "slimming", "fraction": 0.5}, {"reg": "l2"}, "set train.reg: l1_gamma"),
    ({"method": "l1norm", "fraction": 0.5}, {"remedy": "psbn"}, "cannot prune the model of remedy 'psbn'"),
])
def test_bad_pruning_settings_are_refused_with_the_fix(prune, train_settings, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrialConfig.model_validate({"train": train_settings, "prune": prune})


def test_a_trial_without_pruning_settings_keeps_its_id():
    # pinned before the `prune` section existed (test_config.py pins more)
    assert TrialConfig().trial_id == "44136fa355b3"
    assert TrialConfig.model_validate({"prune": {"method": "none"}}).trial_id == "44136fa355b3"


def test_fine_tuning_settings_follow_each_papers_recipe():
    slim = TrialConfig.model_validate({
        "train": {"optimizer": "sgd", "reg": "l1_gamma", "strength": 1e-4, "epochs": 300, "lr_steps": [150, 225]},
        "prune": {"method": "slimming", "fraction": 0.5, "finetune_epochs": 40}}).finetuning().train
    # Liu et al.: the training's LR and steps (at the same fractions), the sparsity term dropped
    assert (slim.lr, slim.epochs, slim.lr_steps, slim.reg) == (0.1, 40, (20, 30), "none")
    l1 = TrialConfig.model_validate({
        "train": {"optimizer": "sgd", "reg": "l2", "strength": 5e-4, "epochs": 300, "lr_steps": [150]},
        "prune": {"method": "l1norm", "fraction": 0.5, "finetune_epochs": 40}})
    # Li et al.: a constant LR of 1/100 of the training's, its own regularizer
    assert (l1.finetuning().train.lr, l1.finetuning().train.lr_steps, l1.finetuning().train.reg) == \
        (pytest.approx(1e-3), (), "l2")
    assert l1.last_epoch == 340
    own = l1.model_copy(update={"prune": l1.prune.model_copy(update={"finetune_lr_scale": 0.1})})
    assert own.finetuning().train.lr == pytest.approx(1e-2)
    with pytest.raises(ValueError, match="does not fine-tune"):
        TrialConfig().finetuning()


@pytest.mark.parametrize("prune", [{}, SLIMMING, {**L1NORM, "finetune_epochs": 2}, {**SLIMMING, "finetune_epochs": 2}],
                         ids=["implicit", "slimming", "l1norm-finetuned", "slimming-finetuned"])
def test_each_pipeline_end_to_end(prune):
    cfg = _trial(prune)
    records = []
    result = train(cfg, lambda m, state: records.append(m))
    finetune = prune.get("finetune_epochs", 0)
    assert result.status == "ok" and [m.epoch for m in records] == list(range(1, 4 + finetune))
    assert all(m.pruned is None for m in records[:-1])
    final = records[-1].pruned
    method = prune.get("method", "none")
    assert final.pruned_by == ("dead_gamma" if method == "none" else method)
    assert final.finetuned == bool(finetune)
    assert final.trained_test_err == records[2].test_err  # the trained network, before pruning
    if method == "none":
        assert final.pruned_test_err == final.unfinetuned_test_err
        return
    assert final.filters_removed_pct == pytest.approx(50.0, abs=1.0)
    assert 0 < final.flops_pruned_pct < 100 and 0 < final.conv_params_pruned_pct < 100
    widths = [sum(layer.n_filters for layer in m.layers) for m in records]
    assert widths[:3] == [232] * 3
    if finetune:  # the epochs after training train and measure the pruned network
        assert widths[3:] == [232 - round(0.5 * 232) if method == "slimming" else 116] * finetune
        assert final.pruned_test_err == records[-1].test_err
        lrs = [m.lr for m in records[3:]]
        assert lrs == ([1e-3, 1e-4] if method == "slimming" else [1e-5, 1e-5])  # FINETUNING's recipes
    else:
        assert final.pruned_test_err == final.unfinetuned_test_err


def test_fine_tuning_recovers_what_pruning_lost():
    """Digits, trained for 4 epochs, then 60% of each layer's filters removed by L1 norm: the error
    jumps; 3 epochs of fine-tuning at the training LR bring it back down."""
    cfg = TrialConfig.model_validate({
        "model": {"width": 0.125},
        "train": {"optimizer": "adam", "reg": "l2", "strength": 1e-4, "epochs": 4, "lr_steps": [3]},
        "prune": {"method": "l1norm", "fraction": 0.6, "finetune_epochs": 3, "finetune_lr_scale": 1.0},
        "device": "cpu"})
    pruned = train(cfg).final.pruned
    assert pruned.unfinetuned_test_err > pruned.trained_test_err + 5
    assert pruned.pruned_test_err < pruned.unfinetuned_test_err - 5


def test_a_fine_tuning_pipeline_resumes_mid_fine_tuning():
    cfg = _trial({**L1NORM, "finetune_epochs": 3}, remedy="gamma_lr_scale")
    states = {}
    full = train(cfg, lambda m, state: states.__setitem__(m.epoch, state), checkpoint_every=1)
    for epoch in (3, 4):  # the cut itself, and one fine-tuning epoch in
        resumed = train(cfg, resume=states[epoch])
        assert resumed.final.train_loss == full.final.train_loss
        assert resumed.final.pruned.pruned_test_err == full.final.pruned.pruned_test_err
        for p, q in zip(resumed.model.parameters(), full.model.parameters(), strict=True):
            assert torch.equal(p, q)


def test_packs_hold_pipelines_that_do_not_fine_tune():
    a = _trial(L1NORM)
    assert can_pack([a, a.model_copy(update={"seed": 1})]) is None
    tuned = _trial({**L1NORM, "finetune_epochs": 2})
    assert pack_key(tuned) is None
    assert "fine-tunes its own pruned network" in can_pack([tuned, tuned.model_copy(update={"seed": 1})])
