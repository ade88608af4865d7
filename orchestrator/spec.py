"""Sweep files: YAML -> validated `SweepSpec` -> a deduplicated list of `TrialConfig`s, the two
together a `Sweep`.

A sweep file holds fixed settings in sections that mirror `TrialConfig` (`dataset:`, `model:`,
`train:`, `prune:`, plus `seed`/`device`), a `grid:` whose axes are multiplied out, `variants:` (rows
of settings for tables that are not full grids) and `seeds:`. Grid axes and variant keys name a trial
setting by its alias (`optimizer`) or its dotted path (`train.optimizer`). A list in a variant row is
an axis of that row alone (`{method: slimming, fraction: [0.3, 0.5]}`: two trials); a setting that is
itself a list (`lr_steps`) takes a list of lists there. Or an `optuna:` search from one fixed
base. `early_stopping:` stops trials that are dominated at a rung (orchestrator.early_stopping).

Every mistake raises `SpecError` with the file, the key and the fix; the CLI turns that into exit 2.
"""

from __future__ import annotations

import copy
import itertools
import json
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sparsity_core.config import TrialConfig, alias_paths, did_you_mean, settings

from .early_stopping import EarlyStopping, RungJudge
from .search import OptunaSpec

__all__ = ["SpecError", "SweepSpec", "Sweep", "Resources", "load_spec", "apply_override",
           "trial_config", "varying_settings", "describe"]


class SpecError(ValueError):
    """A sweep file or command-line mistake; the message is meant for the user as it stands."""


class Resources(BaseModel):
    """What Ray reserves for each Tune trial: one solo trial, or one pack."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cpu: float = Field(1.0, gt=0, description="CPUs per trial (also torch's thread count)")
    gpu: float = Field(0.0, ge=0, le=1, description="GPUs per trial: a fraction shares one; a trial trains on "
                                                   "one GPU at most (unset with device: cuda: 1)")
    max_concurrent: int | None = Field(None, gt=0, description="trials at once (None: as resources allow)")


Pack = int | Literal["auto"]


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    dataset: dict[str, Any] = Field(default_factory=dict)
    model: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    prune: dict[str, Any] = Field(default_factory=dict)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    variants: list[dict[str, Any]] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    resources: Resources = Resources()
    retries: int = Field(2, ge=0, description="re-runs of a trial that raised, before it counts as failed")
    checkpoint_every: int = Field(0, ge=0, description="Tune checkpoint every k epochs (0: none)")
    pack: Pack = Field(1, description="train up to N compatible trials as one packed model (one Tune trial "
                                      "with the `resources` above); `auto`: as many as a probe finds worth it "
                                      "on that device (sparsity_core.capacity)")
    optuna: OptunaSpec | None = Field(
        None, description="search these settings with Optuna instead of a grid (the rest is the fixed base)"
    )
    early_stopping: EarlyStopping | None = Field(
        None, description="stop trials dominated at a rung epoch (`early_stopping: {}`: the defaults)"
    )

    @field_validator("pack", mode="before")
    @classmethod
    def _pack_size(cls, value: Any) -> Pack:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError(f"expected a whole number of trials (1 or more) or `auto`, got {value!r}")

    @model_validator(mode="before")
    @classmethod
    def _one_gpu_for_cuda(cls, raw: Any) -> Any:
        """`device: cuda` reserves one GPU per Tune trial unless `resources.gpu` says otherwise."""
        if isinstance(raw, dict) and raw.get("device") == "cuda":
            resources = raw.get("resources") or {}
            if isinstance(resources, dict) and "gpu" not in resources:
                return {**raw, "resources": {**resources, "gpu": 1.0}}
        return raw

    @model_validator(mode="after")
    def _modes_fit_together(self) -> SweepSpec:
        if self.optuna is not None and (self.grid or self.variants or len(self.seeds) > 1):
            raise ValueError("a sweep with `optuna:` searches from one fixed base: drop `grid:`, "
                             "`variants:` and all but one of `seeds:` (or put the settings in optuna.space)")
        if self.pack != 1 and self.optuna is not None:
            raise ValueError("`pack:` trains a grid's trials together: use it without `optuna:`")
        if self.pack != 1 and self.early_stopping is not None:
            raise ValueError("`early_stopping:` stops single trials, and a stop would end every trial of a "
                             "packed model: use it with pack: 1, or drop early_stopping")
        if self.device == "cuda" and self.resources.gpu == 0:
            raise ValueError("resources.gpu: 0 with device: cuda gives the trials no GPU: set resources.gpu "
                             "(1, or a fraction such as 0.25 to share one), or device: cpu")
        if self.device == "cuda" and self.pack != 1 and self.resources.gpu != 1:
            raise ValueError(f"pack: {self.pack} trains each pack on one whole GPU (its size is checked against "
                             "that GPU's memory): set resources.gpu: 1")
        return self


@dataclass(frozen=True)
class Sweep:
    """A sweep file as it runs: its validated spec and its trials, expanded once (variants x grid x
    seeds in that order, duplicates dropped; an Optuna search's one fixed base), their dataset roots
    absolute."""

    spec: SweepSpec
    trials: tuple[TrialConfig, ...]

    def judge(self) -> RungJudge | None:
        """A fresh early-stopping rule for these trials (None without `early_stopping:`): judged on
        its objectives, else the search's; rungs before the shortest trial's last epoch. Raises
        ValueError naming the key and the fix when the settings do not fit the trials."""
        settings = self.spec.early_stopping
        if settings is None:
            return None
        search = self.spec.optuna.objectives if self.spec.optuna is not None else None
        return settings.judge(search, min(t.train.total_epochs for t in self.trials))


def _set_path(mapping: dict[str, Any], path: str, value: Any) -> None:
    """Write `value` at the dotted `path` of a nested mapping, creating missing sections; raises
    TypeError when a section on the way is not a mapping."""
    *sections, leaf = path.split(".")
    for section in sections:
        mapping = mapping.setdefault(section, {})
        if not isinstance(mapping, dict):
            raise TypeError(f"{section!r} is not a section")
    mapping[leaf] = value


def trial_config(base: dict[str, Any], assignments: Iterable[tuple[str, Any]]) -> TrialConfig:
    """`base` (TrialConfig's sections as plain data) with a value set at each dotted path, validated
    (pydantic's ValidationError names a bad key)."""
    settings = copy.deepcopy(base)
    for path, value in assignments:
        _set_path(settings, path, value)
    return TrialConfig.model_validate(settings)


def _format_errors(source: str, err: ValidationError, where: str = "") -> SpecError:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            parent = e["loc"][:-1]
            options = _field_names(parent)
            msg = f"unknown key{did_you_mean(str(e['loc'][-1]), options)}; valid here: {', '.join(options)}"
        else:
            msg = e["msg"].removeprefix("Value error, ")
        # A check across sections (a trial's, or the sweep's own) has no key: its message names them.
        lines.append(f"{source}: {where}{key + ': ' if key else ''}{msg}")
    return SpecError("\n".join(lines))


def _field_names(loc: tuple) -> list[str]:
    """The valid keys at a location of a trial config or a sweep spec (for did-you-mean)."""
    model: type[BaseModel] = TrialConfig if loc and loc[0] in TrialConfig.model_fields else SweepSpec
    for part in loc:
        field = model.model_fields.get(str(part))
        for sub in (field.annotation, *typing.get_args(field.annotation)) if field else ():
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                model = sub
    return list(model.model_fields)


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"{source}: not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    if raw is None:
        raise SpecError(f"{source}: the file is empty; see sweeps/quick.yaml for a complete example")
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: expected a mapping of sweep settings at the top level, got {type(raw).__name__}")
    return raw


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `--set key=value` to the raw sweep mapping. `key` is dotted (`train.epochs`) or a
    trial setting's alias (`epochs`); `value` is YAML (`[0, 1]`, `1e-3`, `adam`)."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise SpecError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set train.epochs=2")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise SpecError(f"--set {assignment!r}: the value is not valid YAML") from None
    path = key
    if key.split(".")[0] not in SweepSpec.model_fields:
        if key not in alias_paths():
            options = list(SweepSpec.model_fields) + list(alias_paths())
            raise SpecError(f"--set {assignment!r}: unknown key {key!r}{did_you_mean(key, options)}")
        path = alias_paths()[key]
    try:
        _set_path(raw, path, value)
    except TypeError as e:
        raise SpecError(f"--set {assignment!r}: {e}") from None


def load_spec(path: str | Path, overrides: Iterable[str] = (), base: str | Path | None = None) -> Sweep:
    """The sweep file at `path` with `--set` overrides applied, validated and expanded into its
    trials; every mistake, down to a single trial's setting, raises SpecError before anything runs.

    A relative `dataset.root` (the shipped sweeps' `root: data`) is made absolute against `base`,
    by default the working directory: the checkout a sweep is run from, the uploaded copy of
    `ray job submit --working-dir .`, the image's /home/ray/app in the RayJob. Ray Tune runs each
    trial in a folder of its own, on any node, where a relative root would mean something else.
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise SpecError(f"{source}: no such sweep file; the shipped ones are in sweeps/ (e.g. sweeps/quick.yaml)")
    raw = _parse_yaml(path.read_text(), source)
    raw.setdefault("name", path.stem)
    for assignment in overrides:
        apply_override(raw, assignment)
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as e:
        raise _format_errors(source, e) from None
    base = Path.cwd() if base is None else base
    trials = _expand(spec, source)
    sweep = Sweep(spec, tuple(t.model_copy(update={"dataset": t.dataset.resolve_root(base)}) for t in trials))
    try:
        sweep.judge()
    except ValueError as e:
        raise SpecError(f"{source}: {e}") from None
    return sweep


def _resolve(key: str, source: str, where: str) -> str:
    """The dotted path of a trial setting named by its alias or its path."""
    paths = alias_paths()
    if key in paths:
        return paths[key]
    if key in paths.values():
        return key
    raise SpecError(f"{source}: {where}{key}: unknown trial setting{did_you_mean(key, list(paths))}; "
                    f"valid: {', '.join(paths)}")


def _expand(spec: SweepSpec, source: str) -> tuple[TrialConfig, ...]:
    """variants x grid x seeds, in that order, each a validated TrialConfig; duplicates dropped."""
    base = {"dataset": spec.dataset, "model": spec.model, "train": spec.train, "prune": spec.prune,
            "device": spec.device}
    grid = [(_resolve(k, source, "grid."), v) for k, v in spec.grid.items()]
    for key, values in spec.grid.items():
        if not values:
            raise SpecError(f"{source}: grid.{key}: an axis needs at least one value")
    rows = spec.variants or [{}]
    trials: dict[str, TrialConfig] = {}
    for v_index, variant in enumerate(rows):
        # a variant's own axes first, then the grid's: a grid axis overrides a variant's value
        axes = [*_variant_axes(variant, source, f"variants[{v_index}]."), *grid]
        for combo in itertools.product(*(values for _, values in axes)):
            for seed in spec.seeds:
                try:
                    cfg = trial_config(base, [*zip((p for p, _ in axes), combo), ("seed", seed)])
                except ValidationError as e:
                    where = f"variants[{v_index}] " if spec.variants else ""
                    raise _format_errors(source, e, where) from None
                trials.setdefault(cfg.trial_id, cfg)
    return tuple(trials.values())


def _variant_axes(variant: dict[str, Any], source: str, where: str) -> list[tuple[str, list[Any]]]:
    """A variant row as axes (path, values): a list is an axis of the row, any other value an axis
    of one value. A setting whose value is a list (`lr_steps`) is an axis only as a list of lists."""
    sequences = {s.path for s in settings() if s.sequence}
    axes = []
    for key, value in variant.items():
        path = _resolve(key, source, where)
        many = isinstance(value, list) and (path not in sequences or all(isinstance(v, list) for v in value))
        if many and not value:
            raise SpecError(f"{source}: {where}{key}: an axis needs at least one value")
        axes.append((path, value if many else [value]))
    return axes


def varying_settings(trials: Iterable[TrialConfig]) -> list[str]:
    """Aliases of the settings whose value differs between trials (for --dry-run and progress)."""
    flats = [t.flat() for t in trials]
    return [k for k in alias_paths() if len({repr(f[k]) for f in flats}) > 1]


def describe(trials: Sequence[TrialConfig]) -> list[str]:
    """One line per trial: its id and the settings that vary across the sweep (for --dry-run)."""
    varying = varying_settings(trials)
    return [f"{t.trial_id}  " + " ".join(f"{k}={json.dumps(t.flat()[k])}" for k in varying) for t in trials]
