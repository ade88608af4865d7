"""Pack sizes: the probe that measures them (sparsity_core.capacity) and the runner's packing."""

import pytest

from orchestrator import runner
from orchestrator.guard import GuardError
from orchestrator.runner import pack_trials
from orchestrator.spec import SweepSpec
from sparsity_core import TrialConfig, pack_key
from sparsity_core.capacity import PackProbe, probe_packs

from .test_packed import _trial

GIB = 2**30


def test_the_probe_trains_packs_that_double_while_the_rate_grows(tiny):
    cfgs = [tiny(epochs=1).model_copy(update={"seed": seed}) for seed in range(4)]
    probe = probe_packs(cfgs, largest=4)
    assert probe.device == "cpu" and probe.free_bytes is None and probe.peak_bytes == {}
    sizes = sorted(probe.rates)
    assert sizes == [1, 2, 4][: len(sizes)] and len(sizes) >= 2
    assert all(rate > 0 for rate in probe.rates.values())
    assert probe.best() in sizes and probe.largest_fit() is None  # the CPU's memory sets no limit here
    assert "cpu: trials x steps/s by pack size 1: " in probe.describe()
    with pytest.raises(ValueError, match="a pack of 8 needs 8 trials"):
        probe_packs(cfgs, largest=8)


# Measurements as a GPU would give them: 10 GiB free, the dataset and CUDA's buffers 1 GiB, each
# trial 0.5 GiB. The arithmetic that turns them into the largest pack that fits is what is tested.
GPU = PackProbe("cuda (test)", 10 * GIB, {1: 100.0, 2: 190.0, 4: 330.0, 8: 345.0},
                {1: int(1.5 * GIB), 2: 2 * GIB, 4: 3 * GIB, 8: 5 * GIB})


def test_memory_measured_at_two_sizes_predicts_the_largest_pack_that_fits():
    assert GPU.largest_fit() == 16  # (0.9 x 10 GiB - 1 GiB) / 0.5 GiB, from the sizes 4 and 8
    assert GPU.need_bytes(16) == pytest.approx(9 * GIB)
    assert GPU.best() == 4  # the smallest within 5% of the best rate: 330 against 345
    tighter = PackProbe("cuda (test)", 10 * GIB, GPU.rates, GPU.peak_bytes, out_of_memory=12)
    assert tighter.largest_fit() == 11
    assert PackProbe("cuda (test)", GIB, {1: 1.0}, {}, out_of_memory=1).largest_fit() == 0
    assert PackProbe("cuda (test)", GIB, {1: 1.0}, {1: 2 * GIB}).largest_fit() == 0  # one trial exceeds 0.9 GiB
    flat = PackProbe("cuda (test)", 10 * GIB, {1: 1.0, 2: 2.0}, {1: 2 * GIB, 2: 2 * GIB})
    assert flat.largest_fit() == 8  # no growth measured: a trial counts as the peak over the size, 1 GiB


def _packable(n: int, **settings) -> list[TrialConfig]:
    return [_trial(seed, **settings) for seed in range(n)]


def test_packs_of_a_key_are_as_even_as_their_cap_allows():
    adam, sgd = _packable(18), _packable(3, optimizer="sgd")
    packs = pack_trials(adam + sgd, 16)
    assert [len(p) for p in packs] == [9, 9, 3]
    assert [t for p in packs for t in p] == adam + sgd  # sweep order within and across packs
    by_key = pack_trials(adam + sgd, {pack_key(adam[0]): 4})  # sgd's key has no cap: 1
    assert [len(p) for p in by_key] == [4, 4, 4, 3, 3, 1, 1, 1]
    assert [len(p) for p in pack_trials(adam, 1)] == [1] * 18


def test_an_interrupted_runs_packs_are_kept_whatever_the_cap_is_now():
    trials = _packable(6)
    ids = [t.trial_id for t in trials]
    packs = pack_trials(trials, 4, kept=[ids[1:4], [ids[0], "finished-elsewhere"]])
    assert [[t.trial_id for t in p] for p in packs] == [[ids[0], ids[4], ids[5]], ids[1:4]]


def test_pack_sizes_follow_the_probe_and_a_pack_that_cannot_fit_is_refused_with_the_fix(monkeypatch):
    # The probe's own run on a GPU is gpu_check's; here, its measurements (GPU above) drive the runner.
    monkeypatch.setattr(runner, "_probe", lambda spec, jobs: [GPU for _ in jobs])
    trials = _packable(20) + _packable(1, optimizer="sgd")
    auto = SweepSpec(name="t", device="cuda", pack="auto")
    sizes, lines = runner._pack_sizes(auto, trials)
    assert sizes == {pack_key(trials[0]): 4}
    assert lines == [f"pack: auto: 20 trials of this sweep in packs of up to 4 ({GPU.describe()})"]
    assert runner._pack_sizes(SweepSpec(name="t", device="cuda", pack=16), trials)[0] == {pack_key(trials[0]): 16}
    with pytest.raises(GuardError, match=r"pack: 32: a pack of 20 trials of this sweep needs about 11.0 GiB .*"
                                         r"16 fit: set pack: 16 \(or pack: auto\)"):
        runner._pack_sizes(SweepSpec(name="t", device="cuda", pack=32), trials)
    assert runner._pack_sizes(SweepSpec(name="t", device="cpu", pack=32), trials) == (32, [])  # no probe
