"""Multi-objective Optuna search over trial settings, driven by Ray Tune, and the Pareto front.

A sweep's `optuna:` section becomes an `OptunaSpec`: which trial settings to sample (by alias, e.g.
`strength`), the objectives (by default: most dead filters, least test error), the sampler and the
storage. `make_searcher` turns it into Ray Tune's `OptunaSearch` (a trial stopped early ends pruned,
a diverged one failed); the sampled values arrive in each Tune trial's `config` under the alias names.

Storage URLs (`OptunaSpec.storage`, or `default_storage` beside the results):
- any SQLAlchemy URL (`sqlite:///abs/path.db`, `postgresql://user:pass@host/db`, whose driver,
  psycopg, is installed) -> `optuna.storages.RDBStorage`;
- `journal://<path>`, or a plain path ending in `.log` -> `JournalStorage(JournalFileBackend(path))`,
  an append-only file for filesystems where SQLite's locking is unreliable (NFS);
- `s3://bucket/prefix` (with the results' query options) -> a journal of S3 objects
  (`orchestrator.journal.S3JournalBackend`): the study lives and dies with results on S3.
Only the driver talks to the study (Tune's searcher runs there), so one writer suffices.
A study is found again by its name: running the same sweep again continues it. How many trials
are left is the results' to say (`runner`), not the study's states.
"""

from __future__ import annotations

import urllib.parse
import warnings
from collections.abc import Callable, Container
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sparsity_core.config import TrialConfig, alias_paths, did_you_mean

from .objectives import Objective, default_objectives, distinct
from .journal import S3JournalBackend

if TYPE_CHECKING:
    from ray.tune.search.optuna import OptunaSearch

__all__ = [
    "LogUniform",
    "Uniform",
    "IntRange",
    "Categorical",
    "ParamSpec",
    "OptunaSpec",
    "SAMPLERS",
    "default_storage",
    "open_storage",
    "make_searcher",
]

class _Param(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LogUniform(_Param):
    type: Literal["loguniform"]
    low: float = Field(gt=0)
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> LogUniform:
        if not self.high > self.low:
            raise ValueError(f"high ({self.high}) must be greater than low ({self.low})")
        return self

    def distribution(self) -> BaseDistribution:
        return FloatDistribution(self.low, self.high, log=True)


class Uniform(_Param):
    type: Literal["uniform"]
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if not self.high > self.low:
            raise ValueError(f"high ({self.high}) must be greater than low ({self.low})")
        return self

    def distribution(self) -> BaseDistribution:
        return FloatDistribution(self.low, self.high)


class IntRange(_Param):
    """Integers low..high, both included; `log` samples on a log scale (needs low >= 1)."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must not be less than low ({self.low})")
        if self.log and self.low < 1:
            raise ValueError("log: true needs low >= 1")
        return self

    def distribution(self) -> BaseDistribution:
        return IntDistribution(self.low, self.high, log=self.log)


class Categorical(_Param):
    type: Literal["categorical"]
    choices: list[bool | int | float | str] = Field(min_length=1)

    def distribution(self) -> BaseDistribution:
        return CategoricalDistribution(self.choices)


ParamSpec = Annotated[LogUniform | Uniform | IntRange | Categorical, Field(discriminator="type")]


def _check_setting(alias: str, value: Any) -> None:
    """Raise if `value` is not valid for the trial setting `alias` on its own (other settings default)."""
    section, _, leaf = alias_paths()[alias].rpartition(".")
    model: type[BaseModel] = TrialConfig.model_fields[section].annotation if section else TrialConfig
    try:
        model.model_validate({leaf: value})
    except ValidationError as e:
        # Only the field's own errors: a whole-section check (e.g. cifar10 needs `root`) depends on
        # the sweep's fixed settings, which the merged TrialConfig validates later.
        own = [err["msg"].removeprefix("Value error, ") for err in e.errors() if err["loc"] == (leaf,)]
        if own:
            raise ValueError(f"{alias}={value!r}: {own[0]}") from None


class OptunaSpec(BaseModel):
    """The `optuna:` section of a sweep file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_trials: int = Field(gt=0)
    space: dict[str, ParamSpec] = Field(min_length=1, description="trial-setting alias -> distribution")
    objectives: list[Objective] = Field(default_factory=default_objectives, min_length=1)
    sampler: Literal["nsga2", "tpe"] = "nsga2"
    population_size: int = Field(50, ge=2, description="nsga2 only: trials per generation (the first are random)")
    storage: str | None = Field(None, description="None: beside the results (see default_storage)")
    seed: int = Field(0, description="seeds the sampler, so a search is repeatable")

    @field_validator("space")
    @classmethod
    def _known_settings(cls, space: dict[str, Any]) -> dict[str, Any]:
        valid = [a for a in alias_paths() if a != "seed"]
        for alias, param in space.items():
            if alias not in valid:
                raise ValueError(f"unknown trial setting {alias!r}{did_you_mean(alias, valid)}; "
                                 f"valid: {', '.join(valid)}")
            values = param.choices if isinstance(param, Categorical) else [param.low, param.high]
            for value in values:
                _check_setting(alias, value)
        return space

    @field_validator("objectives")
    @classmethod
    def _distinct(cls, objectives: list[Objective]) -> list[Objective]:
        return distinct(objectives)

    def distributions(self) -> dict[str, BaseDistribution]:
        return {alias: param.distribution() for alias, param in self.space.items()}


SAMPLERS: dict[str, Callable[[OptunaSpec, int], optuna.samplers.BaseSampler]] = {
    "nsga2": lambda s, seed: optuna.samplers.NSGAIISampler(population_size=s.population_size, seed=seed),
    "tpe": lambda s, seed: optuna.samplers.TPESampler(seed=seed),
}


def default_storage(store_uri: str) -> str:
    """Where a sweep's study lives when `optuna.storage` is unset: beside its results, so a job
    resubmitted on another machine continues it. `store_uri` is the sweep's results location
    (`ResultStore.uri`): a local folder -> `sqlite:///<folder>/optuna.db`; `s3://bucket/prefix/<sweep>`
    -> the journal `s3://bucket/prefix/<sweep>/optuna-journal` (same query options). Elsewhere no
    default fits: ValueError, naming the fix."""
    parts = urllib.parse.urlsplit(store_uri)
    if parts.scheme in ("", "file"):
        folder = Path(parts.path if parts.scheme else store_uri).resolve()
        return f"sqlite:///{(folder / 'optuna.db').as_posix()}"
    if parts.scheme == "s3":
        return urllib.parse.urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/optuna-journal"))
    raise ValueError(f"results at {store_uri!r}: no Optuna storage can live there by default; set "
                     "optuna.storage to a database URL (postgresql://user:pass@host/db) or an s3:// prefix")


def _journal_path(url: str) -> str | None:
    if url.startswith("journal://"):
        return url.removeprefix("journal://")
    if "://" not in url and url.endswith(".log"):
        return url
    return None


def open_storage(url: str) -> BaseStorage:
    """The Optuna storage named by `url` (see the module docstring), creating a SQLite file's or a
    journal's folder if needed."""
    journal = _journal_path(url)
    if journal is not None:
        Path(journal).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(journal))
    if url.startswith("s3://"):
        return JournalStorage(S3JournalBackend(url))
    if "://" not in url:
        raise ValueError(f"storage {url!r}: expected a database URL (sqlite:///path.db, postgresql://...), "
                         "journal://path, a path ending in .log, or s3://bucket/prefix")
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return RDBStorage(url)


def _existing_trials(storage: BaseStorage, study_name: str, directions: list[str]) -> int:
    """How many trials the study already holds (0 if it is new). An existing study keeps its own
    directions (Optuna loads it silently), so a mismatch with the spec is refused here."""
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return 0
    stored = [d.name.lower() for d in storage.get_study_directions(study_id)]
    if stored != directions:
        raise ValueError(f"study {study_name!r} in the storage optimizes {stored}, the spec asks for "
                         f"{directions}; use another study name or storage, or keep the objectives")
    return len(storage.get_all_trials(study_id, deepcopy=False))


def make_searcher(spec: OptunaSpec, study_name: str, storage_url: str,
                  stopped: Container[str] = frozenset()) -> OptunaSearch:
    """Ray Tune's OptunaSearch for `spec`, its study `study_name` kept in `storage_url`.

    Multi-objective: the metrics and modes are given to the searcher. Leave TuneConfig's metric and
    mode unset: set there, Tune would hand the searcher a single objective. The study is created
    with load_if_exists=True, so an existing study of that name is continued; the sampler's seed is
    then offset by the trials already there, so a resumed search does not replay the random draws
    of its first run. The study names its objectives, so optuna-dashboard labels its axes with them.

    `stopped`: the Tune ids of trials an early-stopping scheduler stopped (filled as the sweep
    runs). The study records those as PRUNED: their values are a rung's, measured early, so they
    must not stand on the study's front or be bred from (NSGA-II picks parents among COMPLETE trials).
    A trial whose objectives are not all finite (diverged) is recorded as FAIL: samplers ignore it.
    """
    storage = open_storage(storage_url)
    directions = ["maximize" if o.mode == "max" else "minimize" for o in spec.objectives]
    seed = spec.seed + _existing_trials(storage, study_name, directions)
    study = optuna.create_study(storage=storage, study_name=study_name, directions=directions, load_if_exists=True)
    with warnings.catch_warnings():  # experimental since Optuna 3.2, and the dashboard's only source of names
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([o.metric for o in spec.objectives])
    from .scheduler import OptunaSearchWithStops  # Ray only where a search runs

    return OptunaSearchWithStops(
        stopped,
        space=spec.distributions(),
        metric=[o.metric for o in spec.objectives],
        mode=[o.mode for o in spec.objectives],
        sampler=SAMPLERS[spec.sampler](spec, seed),
        study_name=study_name,
        storage=storage,
    )

