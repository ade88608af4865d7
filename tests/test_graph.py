"""Captured training steps (`train.cuda_graph`, sparsity_core.engine.GraphedStep).

On the CPU a stand-in capture replays a step by calling it again: everything but the CUDA graph
itself runs (the warm-up and the putting back of what it changed, the static input buffers, a
solo trial as a pack of one, the graph-safe update), and must train exactly as the eager step does.
The CUDA tests run only where a GPU is visible.
"""

import logging

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sparsity_core import TrialConfig, train, train_packed
from sparsity_core.config import OPTIMIZER_NAMES, REGULARIZER_NAMES, TrainConfig
from sparsity_core.engine import CAPTURES, PackedEngine, packed_training_step
from sparsity_core.loop import resolve_device
from sparsity_core.packed import PackedConvNet, PackedOptimizer

from .test_packed import _assert_same_run, _nets, _trial

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def cpu_capture(monkeypatch):
    monkeypatch.setitem(CAPTURES, "cpu", lambda step: step)  # "capture" records, runs nothing


def _graphed(cfg: TrialConfig, **train_settings) -> TrialConfig:
    return TrialConfig.model_validate({**cfg.model_dump(), "train": {**cfg.train.model_dump(), "cuda_graph": True,
                                                                      **train_settings}})


def _packed_steps(optimizer: str, cuda_graph: bool, steps: int = 3) -> tuple[PackedConvNet, torch.optim.Optimizer]:
    nets = _nets(len(REGULARIZER_NAMES))
    model = PackedConvNet(nets)
    cfgs = [TrainConfig(optimizer=optimizer, reg=reg, strength=1e-3, cuda_graph=cuda_graph, lr=0.01 * (i + 1))
            for i, reg in enumerate(REGULARIZER_NAMES)]
    packed = PackedOptimizer(model, cfgs)
    step = packed_training_step(model, packed, cfgs[0], torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batches = [(torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g))
                   for _ in cfgs]
        step(batches)
    return model, packed.optimizer


@pytest.mark.parametrize("optimizer", OPTIMIZER_NAMES)
def test_a_captured_step_trains_exactly_as_the_eager_step(cpu_capture, optimizer):
    """The warm-up before capture trains on the first batch; putting back the model and zeroing
    the optimizer state it created must leave training where a fresh optimizer starts."""
    eager_model, eager_opt = _packed_steps(optimizer, cuda_graph=False)
    model, opt = _packed_steps(optimizer, cuda_graph=True)
    for (name, a), b in zip(eager_model.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    for a, b in zip(eager_opt.state.values(), opt.state.values(), strict=True):
        for key in a:
            assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), key


class _NoHostSync(TorchDispatchMode):
    """Fails on a read of a tensor's value by the host (`.item()`, `float(t)`, `if t:`), which a
    CUDA graph cannot capture."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            raise AssertionError("the step reads a tensor's value on the host")
        return func(*args, **(kwargs or {}))


def test_the_packed_step_reads_nothing_back_from_the_device():
    # SGD keeps no step counter; the Adam family's counters are on the host unless capturable,
    # which torch allows on CUDA only (sparsity_core.optim.OPTIMIZERS).
    nets = _nets(len(REGULARIZER_NAMES))
    model = PackedConvNet(nets)
    cfgs = [TrainConfig(optimizer="sgd", reg=reg, strength=1e-3) for reg in REGULARIZER_NAMES]
    step = packed_training_step(model, PackedOptimizer(model, cfgs), cfgs[0], torch.device("cpu"))
    batches = [(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))) for _ in cfgs]
    with _NoHostSync():
        for _ in range(2):
            step(batches)


PACK = [_trial(0, epochs=3, optimizer="sgd", reg="l2", strength=1e-3, lr=0.05),
        _trial(1, 0.5, epochs=3, optimizer="sgd", reg="wd", strength=1e-2, lr=0.02, lr_steps=[2]),
        _trial(2, epochs=3, optimizer="sgd", lr=1e8)]  # diverges: the warm-up's NaNs must not stay behind
ADAM = [_trial(0, epochs=3, optimizer="adam", reg="l2", strength=1e-3),
        _trial(1, 0.5, epochs=3, optimizer="adam", reg="wd", strength=1e-2, lr=5e-4, lr_steps=[2])]


def test_a_captured_pack_trains_exactly_as_the_eager_pack(cpu_capture):
    eager = train_packed(PACK)
    assert eager[2].status == "diverged"
    graphed = train_packed([_graphed(cfg) for cfg in PACK])
    for a, b in zip(eager, graphed):
        assert a.status == b.status
        assert [m.train_loss for m in a.history] == pytest.approx([m.train_loss for m in b.history], rel=0, abs=0,
                                                                nan_ok=True)
        assert [m.test_err for m in a.history] == [m.test_err for m in b.history]
        for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
            torch.testing.assert_close(q, p, rtol=0, atol=0, equal_nan=True, msg=name)


def test_a_captured_solo_trial_is_a_pack_of_one_and_ends_as_the_eager_trial(cpu_capture):
    cfg = _graphed(ADAM[1])
    graphed = train(cfg)
    assert graphed.status == "ok" and type(graphed.model).__name__ == "ConvNet"
    (pack_of_one,) = train_packed([ADAM[1]])
    assert [m.train_loss for m in graphed.history] == [m.train_loss for m in pack_of_one.history]
    _assert_same_run(graphed, train(ADAM[1]))  # the solo step itself, up to one rounding per update


def test_a_captured_pack_resumed_from_its_checkpoint_ends_as_an_uninterrupted_one(cpu_capture):
    cfgs = [_graphed(cfg) for cfg in ADAM]
    states = {}
    full = train_packed(cfgs, lambda metrics, state: states.__setitem__(next(iter(metrics.values())).epoch, state),
                        checkpoint_every=1)
    resumed = train_packed(cfgs, resume=states[1])
    for a, b in zip(full, resumed):
        assert a.final.train_loss == b.final.train_loss
        for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
            assert torch.equal(p, q), name


def test_cuda_graph_on_the_cpu_is_ignored_with_a_logged_reason(caplog, tiny):
    cfg = tiny(epochs=1, lr_steps=[])
    with caplog.at_level(logging.WARNING, logger="sparsity_core.loop"):
        graphed = train(_graphed(cfg))
    assert "train.cuda_graph ignored" in caplog.text and "cpu" in caplog.text
    eager = train(cfg)
    assert graphed.final.train_loss == eager.final.train_loss  # the eager solo step, bit for bit
    for p, q in zip(graphed.model.parameters(), eager.model.parameters()):
        assert torch.equal(p, q)


def test_a_captured_step_refuses_what_changes_the_model_before_anything_runs(tiny):
    # Refused by the config, on every device: on CUDA the captured solo trial is a pack of one.
    with pytest.raises(ValueError, match="train.cuda_graph cannot capture remedy 'revive'"):
        _graphed(tiny(remedy="revive"))
    pipeline = {"prune": {"method": "l1norm", "fraction": 0.5, "finetune_epochs": 1}}
    with pytest.raises(ValueError, match="fine-tunes its cut network"):
        _graphed(TrialConfig.model_validate({**tiny().model_dump(), **pipeline}))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_refused_with_the_fix(tiny):
    with pytest.raises(ValueError, match="device 'cuda'.*set device: cpu"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="device 'cuda'"):
        train(tiny().model_copy(update={"device": "cuda"}))


# ---- on a GPU ---------------------------------------------------------------------------------


def _on_cuda(cfg: TrialConfig, **train_settings) -> TrialConfig:
    return cfg.model_copy(update={"device": "cuda", "train": cfg.train.model_copy(update=train_settings)})


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_on_cuda_captured_and_eager_packs_and_solo_trials_agree(precision):
    # SGD: its update is proportional to the gradient (Adam's first steps turn kernel rounding
    # into whole steps). cuDNN's kernels differ between a grouped and a plain conv, and bf16
    # rounds at every layer: agreement within float noise, not bits.
    cfgs = [_on_cuda(_trial(seed, epochs=2, optimizer="sgd", reg="wd", strength=1e-3, lr=0.02 * (seed + 1)),
                     precision=precision) for seed in range(3)]
    eager = train_packed(cfgs)
    graphed = train_packed([_graphed(cfg) for cfg in cfgs])
    solo = [train(_graphed(cfg)) for cfg in cfgs]
    tolerance = 1e-4 if precision == "fp32" else 2e-2
    for a, b, c in zip(eager, graphed, solo):
        assert a.status == b.status == c.status == "ok"
        assert b.final.train_loss == pytest.approx(a.final.train_loss, rel=tolerance)
        assert c.final.train_loss == pytest.approx(a.final.train_loss, rel=tolerance)


@needs_cuda
def test_on_cuda_a_captured_pack_equals_itself_across_runs():
    cfgs = [_graphed(_on_cuda(cfg)) for cfg in ADAM]
    a, b = train_packed(cfgs), train_packed(cfgs)
    for x, y in zip(a, b):
        assert [m.train_loss for m in x.history] == [m.train_loss for m in y.history]


@needs_cuda
def test_on_cuda_packed_engine_step_is_one_graph_replay():
    cfgs = [_graphed(_on_cuda(_trial(seed))) for seed in range(2)]
    nets = [net.cuda() for net in _nets(2)]
    engine = PackedEngine(nets, [c.train for c in cfgs], torch.device("cuda"))
    batches = [(torch.randn(8, 3, 16, 16, device="cuda").contiguous(memory_format=torch.channels_last),
                torch.randint(0, 10, (8,), device="cuda")) for _ in cfgs]
    first = engine.step(batches).clone()
    again = engine.step(batches)
    assert again.data_ptr() == engine.step(batches).data_ptr()  # the graph's own output tensor
    assert torch.isfinite(first).all() and torch.isfinite(again).all()
