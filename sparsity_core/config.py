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
import types
import typing
from collections.abc import Iterable
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "TrialConfig",
    "OPTIMIZER_NAMES",
    "PAPER_LRS",
    "REGULARIZER_NAMES",
    "DATASET_NAMES",
    "MODEL_NAMES",
    "ACTIVATION_NAMES",
    "REMEDY_NAMES",
    "Setting",
    "settings",
    "alias_paths",
    "did_you_mean",
    "PER_TRIAL",
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

# Field metadata of a setting that each trial of a pack (sparsity_core.packed) may set on its own:
# its initialisation, optimizer hyperparameters (broadcast over the trial dimension), LR schedule,
# measurement cadence (done per trial on unpacked models) and remedy. Any other setting, including
# one added later without it, must be the same for the whole pack.
PER_TRIAL = {"per_trial": True}


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


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class DataConfig(_Section):
    """Which images, where they live, and how they are fed."""

    name: DatasetName = "digits"
    # Where the data lives, not what it is: `location` settings stay out of the trial id, so the
    # same trial found on another machine (or under another working folder) keeps its id.
    root: str | None = Field(
        None, description="folder of cifar10/cifar100/imagefolder data", json_schema_extra={"location": True}
    )
    download: bool = Field(
        False, description="let torchvision download CIFAR into `root`", json_schema_extra={"location": True}
    )
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


class TrialConfig(_Section):
    """One training run of the study. `trial_id` is a content hash of it."""

    dataset: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    seed: int = Field(0, json_schema_extra=PER_TRIAL)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @property
    def trial_id(self) -> str:
        """Stable 12-hex-digit hash of every setting that differs from its default, except the
        `location` ones (where the data lives, see DataConfig).

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
    keys, `flat()` and the results columns (with their types) all come from."""
    out: list[Setting] = []
    for section, field in TrialConfig.model_fields.items():
        sub = field.annotation
        leaves = sub.model_fields.items() if isinstance(sub, type) and issubclass(sub, BaseModel) else [("", field)]
        for leaf, leaf_field in leaves:
            alias = section if leaf in ("", "name") else leaf
            assert alias not in {s.alias for s in out}, f"alias {alias!r} is ambiguous"
            out.append(Setting(alias, f"{section}.{leaf}" if leaf else section, *_leaf_type(leaf_field.annotation)))
    return tuple(out)


@functools.cache
def _location_settings() -> dict[str, set[str]]:
    """Section -> its settings marked `location` (pydantic's `exclude` shape)."""
    out: dict[str, set[str]] = {}
    for section, field in TrialConfig.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            marked = {leaf for leaf, f in sub.model_fields.items() if (f.json_schema_extra or {}).get("location")}
            if marked:
                out[section] = marked
    return out


def alias_paths() -> dict[str, str]:
    """Alias -> dotted path for every leaf setting of TrialConfig (`optimizer` -> `train.optimizer`)."""
    return {setting.alias: setting.path for setting in settings()}
