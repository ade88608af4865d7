from pathlib import Path

import pytest
from pydantic import ValidationError

from sparsity_core.config import DataConfig, Setting, TrialConfig, alias_paths, settings


def test_trial_id_is_stable_and_content_based():
    a = TrialConfig.model_validate({"train": {"optimizer": "sgd", "strength": 1e-3}})
    b = TrialConfig.model_validate({"train": {"strength": 0.001, "optimizer": "sgd"}})
    c = TrialConfig.model_validate({"train": {"optimizer": "sgd", "strength": 1e-4}})
    assert a.trial_id == b.trial_id != c.trial_id
    assert len(a.trial_id) == 12
    # Spelling out a default does not change the id (defaults are left out of the hash).
    assert TrialConfig.model_validate({"train": {"batch_size": 40}}).trial_id == TrialConfig().trial_id


def test_config_is_frozen():
    cfg = TrialConfig()
    with pytest.raises(ValidationError):
        cfg.seed = 3


@pytest.mark.parametrize(
    "settings, key",
    [
        ({"train": {"optimzer": "adam"}}, "train.optimzer"),
        ({"train": {"optimizer": "adamw"}}, "train.optimizer"),
        ({"train": {"strength": -1e-3}}, "train.strength"),
        ({"train": {"batch_size": 0}}, "train.batch_size"),
        ({"train": {"epochs": -1}}, "train.epochs"),
        ({"train": {"gamma_lr_scale": 0}}, "train.gamma_lr_scale"),
        ({"model": {"negative_slope": 1.0}}, "model.negative_slope"),
        ({"model": {"name": "resnet"}}, "model.name"),
        ({"dataset": {"name": "cifar10"}}, "dataset"),
        ({"train": {"lr_steps": [250, 100]}}, "train.lr_steps"),
    ],
)
def test_bad_settings_name_their_key(settings, key):
    with pytest.raises(ValidationError) as err:
        TrialConfig.model_validate(settings)
    locs = {".".join(map(str, e["loc"])) for e in err.value.errors()}
    assert any(loc.startswith(key) for loc in locs), locs


def test_aliases_are_unique_and_cover_every_setting():
    paths = alias_paths()
    assert paths["optimizer"] == "train.optimizer"
    assert paths["dataset"] == "dataset.name" and paths["model"] == "model.name"
    assert set(TrialConfig().flat()) == set(paths)


def test_one_walk_gives_each_settings_alias_path_type_and_value():
    by_alias = {s.alias: s for s in settings()}
    assert by_alias["strength"] == Setting("strength", "train.strength", float, nullable=False, sequence=False)
    assert by_alias["lr"].nullable and by_alias["lr_steps"].sequence and by_alias["lr_steps"].type is int
    assert by_alias["precision"].type is str and by_alias["seed"].path == "seed"
    cfg = TrialConfig.model_validate({"train": {"strength": 1e-3, "lr_steps": [5, 9]}})
    assert cfg.flat() == {s.alias: s.value(cfg) for s in settings()}
    assert cfg.flat()["lr_steps"] == [5, 9] and cfg.flat()["strength"] == 1e-3


def test_batch_size_rule_keeps_iterations():
    cfg = TrialConfig.model_validate(
        {"train": {"batch_size": 160, "reference_batch_size": 40, "epochs": 325, "lr_steps": [250]}}
    )
    assert cfg.train.total_epochs == 1300
    assert cfg.train.milestones == (1000,)
    plain = TrialConfig.model_validate({"train": {"batch_size": 160}})
    assert plain.train.total_epochs == 325


def test_where_the_data_lives_leaves_the_trial_id():
    # Ids pinned before `location` settings existed: digits and synthetic trials keep theirs.
    assert TrialConfig().trial_id == "44136fa355b3"
    assert TrialConfig.model_validate({"dataset": {"name": "synthetic", "n_train": 256}}).trial_id == "176464b6b357"
    assert TrialConfig.model_validate({"train": {"optimizer": "sgd"}}).trial_id == "1ac597f357c0"
    # root and download say where the files are, not what they are: a job resubmitted on another
    # machine (another working folder, a staged copy) finds the same trials.
    ids = {
        TrialConfig.model_validate({"dataset": {"name": "cifar10", **where}}).trial_id
        for where in ({"root": "data", "download": True}, {"root": "/mnt/shared/data"}, {"root": "/tmp/x"})
    }
    assert len(ids) == 1
    assert ids != {TrialConfig.model_validate({"dataset": {"name": "cifar100", "root": "data"}}).trial_id}
    # ... and stay in the results row.
    assert TrialConfig.model_validate({"dataset": {"name": "cifar10", "root": "/d"}}).flat()["root"] == "/d"
    # The one walk over the settings marks them.
    assert [s.alias for s in settings() if s.location] == ["root", "download"]


def test_relative_roots_resolve_against_the_given_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert DataConfig(name="cifar10", root="data").resolve_root(tmp_path).root == str(tmp_path / "data")
    assert DataConfig(name="cifar10", root="../data").resolve_root(tmp_path / "sweeps").root == str(tmp_path / "data")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert DataConfig(name="cifar10", root="~/data").resolve_root("/elsewhere").root == str(tmp_path / "home" / "data")
    absolute = DataConfig(name="imagefolder", root="/mnt/shared/tiny-imagenet-200", image_size=32)
    assert absolute.resolve_root(tmp_path) == absolute
    assert DataConfig(name="digits").resolve_root(tmp_path) == DataConfig(name="digits")
