"""The one validated configuration of a single training run.

`TrialConfig` is built once at the edge (a sweep file, a notebook) and is frozen afterwards; nothing
downstream re-checks it. Its sections mirror the sweep files: `dataset`, `model`, `train`, plus the
top-level `seed` and `device`. Every leaf setting also has a short, unique *alias* (its own name, or
the section's name for a section's `name` field), which sweep grids and result columns use:
`optimizer` is `train.optimizer`, `dataset` is `dataset.name`.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "DataConfig",
    "DatasetError",
    "ModelConfig",
    "TrainConfig",
    "PruneConfig",
    "TrialConfig",
    "OPTIMIZER_NAMES",
    "PAPER_LRS",
    "REGULARIZER_NAMES",
    "DATASET_NAMES",
    "MODEL_NAMES",
    "ACTIVATION_NAMES",
    "REMEDY_NAMES",
    "REMEDY_SETTINGS",
    "MODEL_REMEDIES",
    "PAPER_GAMMA_LR_SCALE",
    "PRUNE_METHOD_NAMES",
    "Finetuning",
    "FINETUNING",
    "Setting",
    "settings",
    "alias_paths",
    "did_you_mean",
    "PER_TRIAL",
    "LOCATION",
]

# The paper's base learning rate of each optimizer (supplement); `train.lr: null` trains with it.
PAPER_LRS: dict[str, float] = {"sgd": 0.1, "adam": 1e-3, "amsgrad": 1e-3, "adamax": 2e-3, "rmsprop": 1e-3,
                               "adagrad": 1e-2, "adadelta": 1.0}
OPTIMIZER_NAMES = tuple(PAPER_LRS)
REGULARIZER_NAMES = ("none", "l2", "wd", "l1_gamma")
REMEDY_NAMES = ("none", "leaky_relu", "gamma_lr_scale", "revive", "psbn")
DATASET_NAMES = ("digits", "synthetic", "cifar10", "cifar100", "imagefolder")
MODEL_NAMES = ("basicnet", "vgg11", "vgg16")
ACTIVATION_NAMES = ("relu", "leaky_relu")
PRUNE_METHOD_NAMES = ("none", "slimming", "l1norm")

# The supplement's gamma LR scale: 46% -> 33% dead filters (Table 3, CIFAR-100, Adam, L2 1e-4).
PAPER_GAMMA_LR_SCALE = 0.1
# What a remedy changes in the settings trained, by alias: each is set where the trial leaves it at
# its default (a non-default value is the sweep's own choice, e.g. a gamma_lr_scale grid, and is
# kept). These remedies are nothing else, so the settings a row records (`TrialConfig.as_trained`)
# say all of what ran. The other remedies act on the model between epochs (sparsity_core.remedies).
REMEDY_SETTINGS: dict[str, dict[str, Any]] = {
    "leaky_relu": {"activation": "leaky_relu"},
    "gamma_lr_scale": {"gamma_lr_scale": PAPER_GAMMA_LR_SCALE},
}
MODEL_REMEDIES = tuple(name for name in REMEDY_NAMES if name not in ("none", *REMEDY_SETTINGS))


class Finetuning(NamedTuple):
    """How an explicit pruning method trains and fine-tunes, after its paper."""

    train_reg: str | None  # the regularizer it trains with (None: the trial's own, whichever)
    lr_scale: float  # fine-tuning LR / the trial's base LR
    lr_steps: bool  # the training schedule's LR steps, at the same fractions of the fine-tuning epochs
    reg: str | None  # the regularizer while fine-tuning (None: the trial's own)


# Network slimming (Liu et al. 2017) trains with L1 on BN gamma, then fine-tunes "with the same
# optimization setting as in training" (CIFAR: the base LR, / 10 at 50% and 75% of the epochs): here
# the trial's base LR and LR steps, scaled to the fine-tuning epochs. The L1 term is what made the
# network sparse, not part of the fine-tuning; their weight decay beside it has no place in a
# one-regularizer trial, so slimming fine-tunes with none. Li et al. 2017 prune a normally trained
# network and retrain it at a constant LR of 0.001 where it trained at 0.1 (1/100 of the base), with
# the training's weight decay: the trial's own regularizer.
FINETUNING: dict[str, Finetuning] = {
    "slimming": Finetuning(train_reg="l1_gamma", lr_scale=1.0, lr_steps=True, reg="none"),
    "l1norm": Finetuning(train_reg=None, lr_scale=0.01, lr_steps=False, reg=None),
}

# Field metadata of a setting that each trial of a pack (sparsity_core.packed) may set on its own:
# its initialisation, optimizer hyperparameters (broadcast over the trial dimension), LR schedule,
# measurement cadence (done per trial on unpacked models) and remedy. Any other setting, including
# one added later without it, must be the same for the whole pack.
PER_TRIAL = {"per_trial": True}
# Field metadata of a setting that says where the data lives, not what it is: left out of the trial
# id, so the same trial found on another machine (or under another working folder) keeps its id,
# and of what names a configuration in the results (`Setting.location`).
LOCATION = {"location": True}


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest option, or "" when none is close."""
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _one_of(valid: tuple[str, ...], what: str) -> Any:
    """A str type that accepts only the registry's names (the error lists them)."""

    def check(value: str) -> str:
        if value not in valid:
            raise ValueError(f"unknown {what} {value!r}{did_you_mean(value, valid)}; valid: {', '.join(valid)}")
        return value

    return Annotated[str, AfterValidator(check)]


DatasetName = _one_of(DATASET_NAMES, "dataset")
ModelName = _one_of(MODEL_NAMES, "model")
ActivationName = _one_of(ACTIVATION_NAMES, "activation")
OptimizerName = _one_of(OPTIMIZER_NAMES, "optimizer")
RegularizerName = _one_of(REGULARIZER_NAMES, "regularizer")
RemedyName = _one_of(REMEDY_NAMES, "remedy")
PruneMethodName = _one_of(PRUNE_METHOD_NAMES, "pruning method")


class DatasetError(ValueError):
    """A dataset's files are missing or unusable; the message names the root and the fix. Here, not
    in `sparsity_core.data`, so that code that only reports it (the CLI) need not import torch."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class DataConfig(_Section):
    """Which images, where they live, and how they are fed."""

    name: DatasetName = "digits"
    root: str | None = Field(None, description="folder of cifar10/cifar100/imagefolder data",
                             json_schema_extra=LOCATION)
    download: bool = Field(False, description="let torchvision download CIFAR into `root`", json_schema_extra=LOCATION)
    image_size: int | None = Field(
        None, gt=0, description="resize to this many pixels a side; None keeps the native size"
    )
    augment: bool = Field(True, description="random horizontal flips on training batches")
    n_train: int = Field(512, gt=0, description="synthetic only: training images")
    n_test: int = Field(128, gt=0, description="synthetic only: test images")

    @model_validator(mode="after")
    def _root_when_needed(self) -> DataConfig:
        if self.name in ("cifar10", "cifar100", "imagefolder") and not self.root:
            raise ValueError(f"dataset {self.name!r} needs `root`: the folder holding its files")
        return self

    def resolve_root(self, base: str | Path) -> DataConfig:
        """This config with a relative `root` made absolute against the folder `base` (and `~`
        expanded).

        Call it where the sweep is read, before any trial starts: Ray Tune runs each trial in its own
        working folder, on whichever node, so a relative root would name a different folder in every
        trial. Symlinks are kept as written: they may point elsewhere on another node.
        """
        if self.root is None:
            return self
        root = Path(self.root).expanduser()
        if not root.is_absolute():
            root = Path(os.path.normpath(Path(base).absolute() / root))
        return self.model_copy(update={"root": str(root)})


class ModelConfig(_Section):
    """Architecture and the BN / activation knobs the study varies."""

    name: ModelName = "basicnet"
    width: float = Field(1.0, gt=0, description="multiplier on every layer's filter count")
    activation: ActivationName = "relu"
    negative_slope: float = Field(0.01, ge=0, lt=1, description="leaky_relu only")
    gamma_init: float = Field(1.0, json_schema_extra=PER_TRIAL)
    beta_init: float = Field(0.0, json_schema_extra=PER_TRIAL)


class TrainConfig(_Section):
    """Optimizer, regularizer and schedule. Epoch counts are for `batch_size` unless
    `reference_batch_size` is set, in which case they are for that batch size and are rescaled so
    the number of iterations stays the same (the paper's batch-size rule)."""

    optimizer: OptimizerName = "adam"
    lr: float | None = Field(None, gt=0, description="base LR; None takes the paper's default",
                             json_schema_extra=PER_TRIAL)
    reg: RegularizerName = Field("none", json_schema_extra=PER_TRIAL)
    strength: float = Field(0.0, ge=0, description="lambda of the regularizer", json_schema_extra=PER_TRIAL)
    batch_size: int = Field(40, gt=0)
    epochs: int = Field(325, gt=0)
    lr_steps: tuple[int, ...] = Field((250,), description="epochs at which the LR is multiplied by lr_decay",
                                      json_schema_extra=PER_TRIAL)
    lr_decay: float = Field(0.1, gt=0, le=1, json_schema_extra=PER_TRIAL)
    reference_batch_size: int | None = Field(None, gt=0)
    gamma_lr_scale: float = Field(1.0, gt=0, description="LR multiplier of BN gamma", json_schema_extra=PER_TRIAL)
    beta_lr_scale: float = Field(1.0, gt=0, description="LR multiplier of BN beta", json_schema_extra=PER_TRIAL)
    act_every: int = Field(0, ge=0, description="measure dead-by-activation every k epochs (0: at the end only)",
                           json_schema_extra=PER_TRIAL)
    snapshot_every: int = Field(0, ge=0, description="per-filter gamma/beta snapshot every k epochs (0: at the end only)",
                                json_schema_extra=PER_TRIAL)
    eval_batch_size: int = Field(1000, gt=0, json_schema_extra=PER_TRIAL)
    compile: bool = Field(False, description="torch.compile the training step's model")
    cuda_graph: bool = Field(
        False, description="capture the whole training step once as a CUDA graph and replay it (CUDA only; "
                           "ignored, with a logged reason, where the step runs on the CPU)"
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16 autocast of the training step on CUDA (BN statistics stay fp32)"
    )
    remedy: RemedyName = Field(
        "none", description="fix for collapsed filters (see sparsity_core.remedies)", json_schema_extra=PER_TRIAL
    )
    revive_every: int = Field(10, gt=0, description="remedy revive: re-initialise dead filters every k epochs",
                              json_schema_extra=PER_TRIAL)

    @field_validator("lr_steps")
    @classmethod
    def _sorted_steps(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(s <= 0 for s in v) or list(v) != sorted(set(v)):
            raise ValueError("lr_steps must be positive, increasing epoch numbers")
        return v

    def _iteration_scale(self) -> float:
        return 1.0 if self.reference_batch_size is None else self.batch_size / self.reference_batch_size

    @property
    def total_epochs(self) -> int:
        """Epochs actually run, after the equal-iterations rescaling."""
        return max(1, round(self.epochs * self._iteration_scale()))

    @property
    def milestones(self) -> tuple[int, ...]:
        """LR step epochs actually used, after the equal-iterations rescaling."""
        return tuple(max(1, round(s * self._iteration_scale())) for s in self.lr_steps)

    @property
    def base_lr(self) -> float:
        """The LR before the schedule: `lr`, else the paper's for the optimizer."""
        return self.lr if self.lr is not None else PAPER_LRS[self.optimizer]


class PruneConfig(_Section):
    """How the trained network is pruned and measured at the end of the trial.

    `method: none` (the paper's experiment): the dead filters (|gamma| < 1e-3) are removed, exactly
    (their constant output folded into the next layer), with no fine-tuning. `slimming` (Liu et al.
    2017) and `l1norm` (Li et al. 2017) are explicit pipelines: after training (slimming with
    `reg: l1_gamma`) they remove `fraction` of the filters (slimming: the smallest |gamma| over the
    whole network; L1-norm: the smallest filters by L1 weight norm in each layer), then fine-tune
    for `finetune_epochs` (see FINETUNING for the LR and regularizer) in the same training loop.
    """

    method: PruneMethodName = "none"
    fraction: float | None = Field(None, gt=0, lt=1, description="explicit methods: filters removed, of all")
    finetune_epochs: int = Field(0, ge=0, description="explicit methods: epochs of fine-tuning after pruning "
                                                      "(for `reference_batch_size`, as `epochs` are)")
    finetune_lr_scale: float | None = Field(
        None, gt=0, description="fine-tuning LR / the base LR; None: the method's paper (FINETUNING)"
    )

    @model_validator(mode="after")
    def _fits_the_method(self) -> PruneConfig:
        if self.method == "none":
            given = [name for name in ("fraction", "finetune_lr_scale") if getattr(self, name) is not None]
            if self.finetune_epochs:
                given.append("finetune_epochs")
            if given:
                raise ValueError(f"{', '.join(given)}: method 'none' removes the dead filters and does not "
                                 f"fine-tune; drop {', '.join(given)} or set method: slimming or l1norm")
        elif self.fraction is None:
            raise ValueError(f"method {self.method!r} removes a fraction of the filters: set fraction in (0, 1), "
                             "e.g. 0.5")
        return self

    @property
    def explicit(self) -> bool:
        return self.method != "none"


class TrialConfig(_Section):
    """One training run of the study. `trial_id` is a content hash of it."""

    dataset: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    prune: PruneConfig = PruneConfig()
    seed: int = Field(0, json_schema_extra=PER_TRIAL)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _prunable(self) -> TrialConfig:
        method = self.prune.method
        if not self.prune.explicit:
            return self
        wanted = FINETUNING[method].train_reg
        if wanted is not None and self.train.reg != wanted:
            raise ValueError(f"prune.method {method!r} trains with reg {wanted!r} (its paper's), not "
                             f"{self.train.reg!r}: set train.reg: {wanted}")
        if self.train.remedy in MODEL_REMEDIES:
            raise ValueError(f"prune.method {method!r} cannot prune the model of remedy {self.train.remedy!r} "
                             f"(it changes the network between epochs); use method none, or remedy "
                             f"{' or '.join(n for n in REMEDY_NAMES if n not in MODEL_REMEDIES)}")
        return self

    @model_validator(mode="after")
    def _graphable(self) -> TrialConfig:
        # A captured step trains a solo trial as a pack of one (sparsity_core.engine), whose model is
        # one network throughout: refused here, not in a worker, where it runs on CUDA only.
        if not self.train.cuda_graph:
            return self
        if self.train.remedy in MODEL_REMEDIES:
            raise ValueError(f"train.cuda_graph cannot capture remedy {self.train.remedy!r} (it changes the model "
                             "between epochs); set train.cuda_graph: false")
        if self.prune.explicit and self.prune.finetune_epochs:
            raise ValueError("train.cuda_graph cannot capture a pruning pipeline that fine-tunes its cut network; "
                             "set train.cuda_graph: false or prune.finetune_epochs: 0")
        return self

    def as_trained(self) -> TrialConfig:
        """The settings this trial actually trains with: its remedy's settings (REMEDY_SETTINGS)
        applied. Its `trial_id` is not this config's but the one asked for (`self.trial_id`)."""
        by_alias = {setting.alias: setting for setting in settings()}
        sections: dict[str, dict[str, Any]] = {}
        for alias, value in REMEDY_SETTINGS.get(self.train.remedy, {}).items():
            if by_alias[alias].value(self) == _defaults()[alias]:
                section, leaf = by_alias[alias].path.split(".")
                sections.setdefault(section, {})[leaf] = value
        return self.model_copy(update={section: getattr(self, section).model_copy(update=changes)
                                       for section, changes in sections.items()})

    def finetuning(self) -> TrialConfig:
        """The settings of the fine-tuning phase of an explicit pruning pipeline (`prune`): the
        same trial with `train` set to fine-tune (`FINETUNING`: its LR, schedule and regularizer)
        for `finetune_epochs`. Raises ValueError for a trial that does not fine-tune."""
        p, t = self.prune, self.train
        if not (p.explicit and p.finetune_epochs):
            raise ValueError("this trial does not fine-tune (prune.method none or prune.finetune_epochs 0)")
        recipe = FINETUNING[p.method]
        scale = p.finetune_lr_scale if p.finetune_lr_scale is not None else recipe.lr_scale
        steps = sorted({round(s * p.finetune_epochs / t.epochs) for s in t.lr_steps}) if recipe.lr_steps else []
        train = t.model_copy(update={
            "lr": t.base_lr * scale, "epochs": p.finetune_epochs, "reg": recipe.reg or t.reg,
            "lr_steps": tuple(s for s in steps if 0 < s < p.finetune_epochs),
        })
        return self.model_copy(update={"train": train})

    @property
    def last_epoch(self) -> int:
        """Epochs run in all: training, then fine-tuning where the pruning pipeline fine-tunes."""
        extra = self.finetuning().train.total_epochs if self.prune.explicit and self.prune.finetune_epochs else 0
        return self.train.total_epochs + extra

    @property
    def trial_id(self) -> str:
        """Stable 12-hex-digit hash of every setting that differs from its default, except the
        `location` ones (where the data lives: LOCATION).

        Leaving defaults out keeps existing ids valid when a new setting (with a default) is added;
        changing a default's value is therefore a breaking change of trial ids.
        """
        settings = self.model_dump(mode="json", exclude_defaults=True, exclude=_location_settings())
        payload = json.dumps(settings, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def flat(self) -> dict[str, Any]:
        """Every leaf setting under its alias: the columns of a results row."""
        return {setting.alias: setting.value(self) for setting in settings()}


class Setting(NamedTuple):
    """One leaf setting of TrialConfig, as sweep grids and result columns name it."""

    alias: str  # `optimizer`
    path: str  # `train.optimizer`
    type: type  # str, int, float or bool (a registry name or a Literal is a str)
    nullable: bool  # None is a valid value (`lr`: the paper's default)
    sequence: bool  # a tuple of `type` (`lr_steps`), a list in a results column
    location: bool = False  # where the data lives, not what it is (field metadata LOCATION)

    def value(self, cfg: TrialConfig) -> Any:
        """This setting's value in `cfg`, a tuple as a list."""
        value: Any = cfg
        for part in self.path.split("."):
            value = getattr(value, part)
        return list(value) if self.sequence else value


def _leaf_type(annotation: Any) -> tuple[type, bool, bool]:
    """(scalar type, nullable, sequence) of a leaf field's annotation."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        (kind,) = [a for a in args if a is not type(None)]  # only `X | None` unions occur
        scalar, _, sequence = _leaf_type(kind)
        return scalar, True, sequence
    if origin is tuple:
        return _leaf_type(args[0])[0], False, True
    if origin is Literal:
        return type(args[0]), False, False
    return annotation, False, False


@functools.cache
def settings() -> tuple[Setting, ...]:
    """Every leaf setting of TrialConfig in field order: the one walk over its fields that sweep
    keys, `flat()`, the results columns (with their types) and the trial id's exclusions all come from."""
    out: list[Setting] = []
    for section, field in TrialConfig.model_fields.items():
        sub = field.annotation
        leaves = sub.model_fields.items() if isinstance(sub, type) and issubclass(sub, BaseModel) else [("", field)]
        for leaf, leaf_field in leaves:
            alias = section if leaf in ("", "name") else leaf
            assert alias not in {s.alias for s in out}, f"alias {alias!r} is ambiguous"
            location = (leaf_field.json_schema_extra or {}).get("location") is True
            out.append(Setting(alias, f"{section}.{leaf}" if leaf else section, *_leaf_type(leaf_field.annotation),
                               location=location))
    return tuple(out)


@functools.cache
def _location_settings() -> dict[str, set[str]]:
    """Section -> its `location` settings (pydantic's `exclude` shape)."""
    out: dict[str, set[str]] = {}
    for setting in settings():
        if setting.location:
            section, _, leaf = setting.path.rpartition(".")
            out.setdefault(section, set()).add(leaf)
    return out


def alias_paths() -> dict[str, str]:
    """Alias -> dotted path for every leaf setting of TrialConfig (`optimizer` -> `train.optimizer`)."""
    return {setting.alias: setting.path for setting in settings()}


@functools.cache
def _defaults() -> dict[str, Any]:
    """Alias -> the default value of every leaf setting."""
    return TrialConfig().flat()
