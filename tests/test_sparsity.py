import torch

from sparsity_core.config import DataConfig
from sparsity_core.data import load_dataset
from sparsity_core.models import BasicNet, conv_blocks
from sparsity_core.sparsity import dead_by_gamma, filter_stats


def _planted():
    torch.manual_seed(0)
    net = BasicNet(num_classes=10, in_channels=3, width=0.125)
    blocks = dict(conv_blocks(net))
    with torch.no_grad():
        blocks["C2"].bn.weight[[0, 3]] = 0.0          # dead by gamma; beta 0 -> output exactly 0
        blocks["C6"].bn.weight[5] = 5e-4              # below 1e-3
        blocks["C6"].bn.weight[6] = 2e-3              # above: alive
        blocks["C4"].bn.weight[1] = 1.0               # gamma alive, but ...
        blocks["C4"].bn.bias[1] = -1e3                # ... a hugely negative beta kills it by activation
    return net


def test_dead_by_gamma_counts_planted_filters():
    counts = {k: int(v) for k, v in dead_by_gamma(_planted()).items()}
    assert counts == {"C1": 0, "C2": 2, "C3": 0, "C4": 0, "C5": 0, "C6": 1, "C7": 0}


def test_dead_by_activation_and_universality():
    net = _planted()
    data = load_dataset(DataConfig(name="synthetic", n_train=128, n_test=32))
    stats = filter_stats(net, data, batch_size=50)
    assert net.training  # restored after the eval-mode pass
    dead = {name: set(torch.nonzero(s.dead_act).flatten().tolist()) for name, s in stats.items()}
    assert dead["C2"] == {0, 3}
    assert 1 in dead["C4"]
    assert stats["C2"].universality[0] == 0.0
    assert torch.all((stats["C1"].universality >= 0) & (stats["C1"].universality <= 1))
    assert stats["C2"].gamma[0] == 0.0 and stats["C4"].beta[1] == -1e3


def test_gamma_only_snapshot_skips_activations():
    stats = filter_stats(_planted())
    assert stats["C1"].max_act is None and stats["C1"].dead_act is None


def test_output_mean_and_std_over_the_training_set_merge_batches_exactly():
    net = _planted().eval()
    with torch.no_grad():  # a nearly constant filter: a large offset, a tiny spread
        block = dict(conv_blocks(net))["C3"].bn
        block.weight[0], block.bias[0] = 1e-5, 50.0
    data = load_dataset(DataConfig(name="synthetic", n_train=128, n_test=32))
    stats = filter_stats(net, data, batch_size=50)  # three uneven batches
    outputs = {}
    hooks = [b.register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o.double()))
             for name, b in conv_blocks(net)]
    with torch.no_grad():
        net(data.normalize(data.train_x))
    for h in hooks:
        h.remove()
    for name, out in outputs.items():
        flat = out.transpose(0, 1).flatten(1)
        torch.testing.assert_close(stats[name].act_mean.double(), flat.mean(1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(stats[name].act_std.double(), flat.std(1, correction=0), rtol=1e-3, atol=1e-9)
    assert 0 < stats["C3"].act_std[0] < 1e-4
