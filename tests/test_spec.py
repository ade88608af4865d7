import csv
from collections import Counter
from pathlib import Path

import pytest

from orchestrator.spec import SpecError, apply_override, load_spec, varying_settings

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))
PAPER = ROOT / "orchestrator" / "reference"
# sweep file -> (paper CSV, dataset of rows that do not name one)
PAPER_SWEEPS = {
    "supp_table1.yaml": ("supp_table1_cifar10.csv", "cifar10"),
    "supp_table2.yaml": ("supp_table2_cifar100.csv", "cifar100"),
    "supp_table3.yaml": ("supp_table3_cifar100_adam_l2_1e-4.csv", "cifar100"),
    "supp_table4.yaml": ("supp_table4_l2.csv", None),
}
# CSV columns that are trial settings, with the defaults that an empty CSV cell stands for.
SETTING_COLUMNS = {"optimizer": None, "reg": None, "strength": None, "activation": "relu",
                   "negative_slope": 0.01, "gamma_init": 1.0, "beta_init": 0.0,
                   "gamma_lr_scale": 1.0, "beta_lr_scale": 1.0, "dataset": None}


def test_sweep_files_are_shipped():
    names = {p.name for p in SWEEPS}
    assert {"quick.yaml", "table1.yaml", "batch_size.yaml", *PAPER_SWEEPS} <= names


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_shipped_sweep_parses_and_expands(path):
    sweep = load_spec(path)
    trials = sweep.trials
    assert trials, "a sweep with no trials"
    assert len({t.trial_id for t in trials}) == len(trials)
    assert {t.seed for t in trials} == set(sweep.spec.seeds)


def _key(values: dict, columns: list[str]) -> tuple:
    out = []
    for col in columns:
        value = values[col]
        out.append(float(value) if col not in ("optimizer", "reg", "activation", "dataset") else value)
    return tuple(out)


@pytest.mark.parametrize("sweep, table", PAPER_SWEEPS.items(), ids=list(PAPER_SWEEPS))
def test_paper_sweeps_expand_to_exactly_the_csv_rows(sweep, table):
    csv_name, dataset = table
    with open(PAPER / csv_name) as f:
        rows = list(csv.DictReader(f))
    columns = [c for c in SETTING_COLUMNS if c in rows[0] or c == "dataset"]
    expected = Counter()
    for row in rows:
        values = {c: row.get(c) or SETTING_COLUMNS[c] for c in columns}
        values["dataset"] = row.get("dataset") or dataset
        expected[_key(values, columns)] += 1
    loaded = load_spec(ROOT / "sweeps" / sweep)
    got = Counter(_key(t.flat(), columns) for t in loaded.trials)
    assert got == Counter({k: n * len(loaded.spec.seeds) for k, n in expected.items()})


def test_table1_is_the_main_papers_grid():
    trials = load_spec(ROOT / "sweeps" / "table1.yaml").trials
    assert len(trials) == 2 * 4 * 2 * 3 * 3
    assert {t.train.optimizer for t in trials} == {"sgd", "adam", "adadelta", "adagrad"}
    assert all(t.train.total_epochs == 325 and t.train.milestones == (250,) for t in trials)


def test_batch_size_sweep_keeps_iterations():
    trials = load_spec(ROOT / "sweeps" / "batch_size.yaml").trials
    steps = {t.train.batch_size: t.train.total_epochs / t.train.batch_size for t in trials}
    assert sorted(steps) == [40, 80, 160, 320, 640]
    assert len(set(steps.values())) == 1


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


BASE = "dataset: {name: synthetic}\nmodel: {width: 0.125}\ntrain: {epochs: 2, lr_steps: [1]}\n"


def test_grid_variants_seeds_and_dedupe(tmp_path):
    path = _write(tmp_path, BASE + (
        "grid: {optimizer: [adam, sgd], train.reg: [l2, wd]}\n"
        "variants: [{strength: 1.0e-3}, {strength: 1.0e-4}, {strength: 0.001}]\n"
        "seeds: [0, 1]\n"))
    trials = load_spec(path).trials
    assert len(trials) == 2 * 2 * 2 * 2  # the third variant repeats the first
    assert varying_settings(trials) == ["optimizer", "reg", "strength", "seed"]


def test_a_list_in_a_variant_is_that_variants_axis(tmp_path):
    """One sweep draws each pruning method's curve: fractions for the explicit methods, strengths
    for the implicit one; a list-valued setting takes a list of lists there."""
    path = _write(tmp_path, BASE + (
        "variants:\n"
        "  - {method: none, reg: l2, strength: [1.0e-4, 1.0e-3]}\n"
        "  - {method: slimming, reg: l1_gamma, strength: 1.0e-4, fraction: [0.3, 0.5, 0.7], finetune_epochs: 2}\n"
        "  - {method: l1norm, reg: l2, fraction: [0.5], lr_steps: [[1], [2]]}\n"
        "  - {lr_steps: [1]}\n"
        "seeds: [0, 1]\n"))
    trials = load_spec(path).trials
    assert len(trials) == (2 + 3 + 2 + 1) * 2
    slim = [t for t in trials if t.prune.method == "slimming" and t.seed == 0]
    assert [t.prune.fraction for t in slim] == [0.3, 0.5, 0.7] and {t.train.reg for t in slim} == {"l1_gamma"}
    assert {t.train.lr_steps for t in trials if t.prune.method == "l1norm"} == {(1,), (2,)}
    assert {t.train.strength for t in trials if t.prune.method == "none" and t.train.reg == "l2"} == {1e-4, 1e-3}
    with pytest.raises(SpecError, match=r"variants\[0\]\.fraction: an axis needs at least one value"):
        load_spec(_write(tmp_path, BASE + "variants: [{fraction: []}]\n"))


def test_overrides_by_dotted_key_and_alias(tmp_path):
    path = _write(tmp_path, BASE + "grid: {optimizer: [adam, sgd]}\n")
    trials = load_spec(path, ["train.epochs=5", "seeds=[3, 4]", "grid.optimizer=[adam]", "strength=1e-3"]).trials
    assert [(t.train.epochs, t.seed, t.train.optimizer, t.train.strength) for t in trials] == [
        (5, 3, "adam", 1e-3), (5, 4, "adam", 1e-3)]


@pytest.mark.parametrize(
    "text, expected",
    [
        (BASE + "gird: {optimizer: [adam]}\n", "gird: unknown key (did you mean 'grid'?)"),
        (BASE.replace("epochs: 2", "epohcs: 2"), "train.epohcs: unknown key (did you mean 'epochs'?)"),
        (BASE + "grid: {optimiser: [adam]}\n", "grid.optimiser: unknown trial setting (did you mean 'optimizer'?)"),
        (BASE + "grid: {optimizer: [adamw]}\n", "unknown optimizer 'adamw' (did you mean 'adam'?); valid: sgd, adam"),
        (BASE + "grid: {strength: [-1.0]}\n", "train.strength: Input should be greater than or equal to 0"),
        (BASE + "grid: {reg: [l3]}\n", "unknown regularizer 'l3'"),
        (BASE.replace("synthetic", "mnist"), "unknown dataset 'mnist'"),
        (BASE + "model: {name: resnet}\n", "unknown model 'resnet'"),
        (BASE.replace("epochs: 2", "epochs: 0"), "train.epochs: Input should be greater than 0"),
        (BASE + "train: {batch_size: -4}\n", "train.batch_size"),
        (BASE + "grid: {gamma_lr_scale: [0]}\n", "train.gamma_lr_scale: Input should be greater than 0"),
        (BASE + "grid: {negative_slope: [1.5]}\n", "model.negative_slope: Input should be less than 1"),
        (BASE + "seeds: 3\n", "seeds: Input should be a valid list"),
        (BASE + "grid: {optimizer: adam}\n", "grid.optimizer: Input should be a valid list"),
        (BASE + "resources: {cpu: 0}\n", "resources.cpu: Input should be greater than 0"),
        (BASE + "early_stopping: {rungs: [1, 5]}\n",
         "early_stopping.rungs: [5] not before the last epoch (2); keep rungs below train.epochs"),
        (BASE + "early_stopping: {}\n", "early_stopping.grace_period: 10 is not before the last epoch (2)"),
        (BASE + "early_stopping: {grace_perod: 1}\n", "early_stopping.grace_perod: unknown key (did you mean 'grace_period'?)"),
        (BASE + "early_stopping: {reduction_factor: 1}\n", "early_stopping.reduction_factor: Input should be greater than 1"),
        (BASE + "early_stopping: {rungs: [1], objectives: [{metric: pruned_test_err, mode: min}]}\n",
         "early_stopping.objectives: pruned_test_err not reported every epoch"),
        (BASE + "pack: 2\nearly_stopping: {rungs: [1]}\n", "use it with pack: 1, or drop early_stopping"),
        (BASE + "resources: {gpu: 2}\n", "resources.gpu: Input should be less than or equal to 1"),
        (BASE + "pack: 0\n", "pack: expected a whole number of trials (1 or more) or `auto`, got 0"),
        (BASE + "pack: many\n", "got 'many'"),
        (BASE + "device: cuda\nresources: {gpu: 0}\n", "device: cuda gives the trials no GPU: set resources.gpu"),
        (BASE + "device: cuda\npack: 4\nresources: {gpu: 0.25}\n", "pack: 4 trains each pack on one whole GPU"),
        (BASE + "device: cuda\npack: auto\nresources: {gpu: 0.5}\n", "set resources.gpu: 1"),
        (BASE + "prune: {method: l1norm, fraction: 1.5}\n", "prune.fraction: Input should be less than 1"),
        (BASE + "prune: {method: l1norm, fraction: 0.5, finetune_epochs: -1}\n",
         "prune.finetune_epochs: Input should be greater than or equal to 0"),
        (BASE + "prune: {method: slimmming, fraction: 0.5}\n", "unknown pruning method 'slimmming' (did you mean"),
        (BASE + "prune: {method: l1norm}\n", "set fraction in (0, 1)"),
        (BASE + "grid: {fraction: [0.5]}\n", "method 'none' removes the dead filters"),
        (BASE + "prune: {methd: l1norm}\n", "prune.methd: unknown key (did you mean 'method'?)"),
        (BASE + "train: {remedy: psbn}\nprune: {method: l1norm, fraction: 0.5}\n",
         "cannot prune the model of remedy 'psbn'"),
        ("grid: [\n", "not valid YAML at line"),
        ("", "the file is empty"),
        ("- a\n- b\n", "expected a mapping"),
    ],
)
def test_bad_sweep_files_name_the_key_and_the_fix(tmp_path, text, expected):
    with pytest.raises(SpecError) as err:
        load_spec(_write(tmp_path, text))
    assert expected in str(err.value)
    assert str(tmp_path / "sweep.yaml") in str(err.value)


def test_early_stopping_turns_on_with_an_empty_section_and_takes_overrides(tmp_path):
    path = _write(tmp_path, BASE.replace("epochs: 2", "epochs: 100") + "early_stopping: {}\n")
    sweep = load_spec(path)
    assert sweep.judge().rungs == (10, 30, 90)
    assert [m for m, _ in sweep.judge().objectives] == ["dead_gamma_pct", "test_err"]
    assert load_spec(path, ["early_stopping.rungs=[50]"]).judge().rungs == (50,)
    assert load_spec(path, ["early_stopping=null"]).judge() is None
    assert load_spec(_write(tmp_path, BASE)).judge() is None


def test_resources_per_tune_trial(tmp_path):
    """A CUDA sweep reserves one GPU per Tune trial unless it says otherwise; a pack holds one GPU."""
    assert load_spec(_write(tmp_path, BASE)).spec.resources.gpu == 0
    assert load_spec(_write(tmp_path, BASE + "device: cuda\nresources: {cpu: 2}\n")).spec.resources.gpu == 1
    assert load_spec(_write(tmp_path, BASE + "device: cuda\nresources: {gpu: 0.25}\n")).spec.resources.gpu == 0.25
    packed = load_spec(_write(tmp_path, BASE + "device: cuda\npack: auto\n")).spec
    assert (packed.pack, packed.resources.gpu) == ("auto", 1)
    assert load_spec(_write(tmp_path, BASE), ["pack=auto"]).spec.pack == "auto"


def test_missing_file_and_bad_overrides(tmp_path):
    with pytest.raises(SpecError, match="no such sweep file"):
        load_spec(tmp_path / "nope.yaml")
    for bad, message in [("train.epochs", "expected KEY=VALUE"), ("epohcs=2", "did you mean 'epochs'"),
                         ("train.epochs=[", "not valid YAML")]:
        with pytest.raises(SpecError, match=message):
            apply_override({}, bad)


def test_a_trial_goes_to_tune_and_back_validated_once_per_process(tmp_path):
    """The driver finds the TrialConfigs it expanded by id (the same objects); a worker validates
    each of its trial's configs; a searcher's sample is validated once on the driver, then kept."""
    from ray.tune.experiment import Trial

    from orchestrator.runner import _Configs, _member, trial_configs

    sweep = load_spec(_write(tmp_path, BASE + "grid: {strength: [1.0e-3, 1.0e-4]}\n"))
    configs = _Configs(sweep.trials)
    for cfg in sweep.trials:
        trial = Trial("fn", config={"trials": [_member(cfg)]}, stub=True)
        assert configs.of(trial)[cfg.trial_id] is cfg
        assert configs.name(trial) == cfg.trial_id
        assert trial_configs(trial.config) == [cfg]
    base = sweep.trials[0]
    sampled = Trial("fn", config={"trials": [_member(base)], "strength": 0.5}, stub=True)
    (worker,) = trial_configs(sampled.config)
    assert worker.train.strength == 0.5 and worker.model_copy(update={"train": base.train}) == base
    kept = configs.of(sampled)
    assert list(kept) == [worker.trial_id] and configs.of(sampled) is kept
    pack = Trial("fn", config={"trials": [_member(t) for t in sweep.trials]}, stub=True)
    assert configs.name(pack) == f"{sweep.trials[0].trial_id}-pack2"


def test_relative_dataset_roots_resolve_against_the_working_directory(tmp_path, monkeypatch):
    """A trial runs in a folder of Tune's, on any node: its root is made absolute once, where the
    sweep is read. The shipped sweeps' `root: data` is the data/ folder of the checkout they run from."""
    monkeypatch.chdir(tmp_path)
    table1 = load_spec(ROOT / "sweeps" / "table1.yaml")
    assert {t.dataset.root for t in table1.trials} == {str(tmp_path / "data")}
    moved = load_spec(ROOT / "sweeps" / "table1.yaml", ["dataset.root=~/cifar"], base="/elsewhere")
    assert {t.dataset.root for t in moved.trials} == {str(Path("~/cifar").expanduser())}
    elsewhere = load_spec(ROOT / "sweeps" / "table1.yaml", base="/mnt/job")
    assert {t.dataset.root for t in elsewhere.trials} == {"/mnt/job/data"}
    # Where the data lives is not part of a trial's id: the same trials, found again from anywhere.
    assert [t.trial_id for t in elsewhere.trials] == [t.trial_id for t in table1.trials]
    assert load_spec(ROOT / "sweeps" / "quick.yaml").trials[0].dataset.root is None
