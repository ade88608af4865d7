"""Run a sweep's trials as Ray Tune trials; the driver alone writes the Parquet store.

Workers call `sparsity_core.train` and `ray.tune.report` once per epoch (with a Tune checkpoint every
`checkpoint_every` epochs). On the driver, `StoreCallback` hands those reports to the store's
`SweepWriter`, so workers never need the results filesystem. Progress lines go to the logger
`orchestrator.runner` (the CLI prints them); importing this module starts and sets nothing.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.fs as pafs
import ray
import torch
from ray import tune

from sparsity_core import TrialConfig, train
from sparsity_core.config import alias_paths

from .results import pareto_front
from .search import default_storage, make_searcher, trials_left
from .spec import Sweep, trial_config, varying_settings
from .store import FINISHED, ResultStore, SweepWriter
from .version import code_version

__all__ = ["SweepSummary", "run_sweep", "connect", "describe", "StoreCallback", "trial_configs", "pack_trials",
           "resumable_checkpoints", "reuse_finished", "mark_pareto_front"]

_log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
META_FILE = "meta.json"  # beside the state: its epoch, readable without loading the state
ID_KEY = "sweep_trial_id"  # our trial id in a report; Tune overwrites `trial_id` with its own
# Set for Tune when a sweep starts: its automatic CSV/JSON/TensorBoard loggers grow the driver's
# memory (we write Parquet ourselves), and only its legacy console output honours verbose=0 (our
# ProgressCallback logs the progress lines).
_TUNE_ENV = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "RAY_AIR_NEW_OUTPUT": "0"}


def _sampled(config: dict[str, Any]) -> list[tuple[str, Any]]:
    """(path, value) of each value a searcher sampled into a Tune trial's config (its top-level keys
    named by a setting's alias)."""
    return [(path, config[alias]) for alias, path in alias_paths().items() if alias in config]


def trial_configs(config: dict[str, Any]) -> list[TrialConfig]:
    """The TrialConfigs of a Tune trial's config, validated: one, or a pack of them (`pack:` in the
    sweep), each with the values a searcher sampled."""
    return [trial_config(member["settings"], _sampled(config)) for member in config["trials"]]


def _member(cfg: TrialConfig) -> dict[str, Any]:
    """A trial as a Tune config carries it: its settings as plain data for the worker, and its id,
    by which the driver finds the TrialConfig it expanded."""
    return {"id": cfg.trial_id, "settings": cfg.model_dump(mode="json")}


def _trainable(config: dict[str, Any], filesystem, resume_from: dict[str, str]) -> None:
    """One Tune trial: train its config, report each epoch, checkpoint when the trainer says so;
    or train a pack of configs as one packed model, reporting each member's epochs.

    A single trial continues from Tune's own checkpoint when Tune retries it, else from
    `resume_from` (the driver's pick among checkpoints an earlier, interrupted run left behind).
    """
    torch.set_num_threads(max(1, int(config["threads"])))
    cfgs = trial_configs(config)
    if len(cfgs) > 1:
        from sparsity_core.packed import train_packed

        train_packed(cfgs, lambda i, metrics: tune.report({**metrics.to_record(), ID_KEY: cfgs[i].trial_id}))
        return
    cfg = cfgs[0]
    checkpoint = tune.get_checkpoint()
    if checkpoint is None and cfg.trial_id in resume_from:
        checkpoint = tune.Checkpoint(resume_from[cfg.trial_id], filesystem=filesystem)
    resume = None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = torch.load(Path(folder) / STATE_FILE, weights_only=False)

    def report(metrics, state) -> None:
        record = {**metrics.to_record(), ID_KEY: cfg.trial_id}
        if state is None:
            tune.report(record)
            return
        record["checkpointed"] = True
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / STATE_FILE)
            (Path(folder) / META_FILE).write_text(json.dumps({"epoch": state["epoch"]}))
            tune.report(record, checkpoint=tune.Checkpoint.from_directory(folder))

    train(cfg, report, resume=resume, checkpoint_every=config["checkpoint_every"])


def pack_trials(trials: list[TrialConfig], size: int) -> list[list[TrialConfig]]:
    """Greedy packs of up to `size` trials that can share one packed model (in sweep order)."""
    if size == 1:
        return [[t] for t in trials]
    from sparsity_core.packed import can_pack

    packs: list[list[TrialConfig]] = []
    for trial in trials:
        home = next((p for p in packs if len(p) < size and can_pack([*p, trial]) is None), None)
        if home is None:
            packs.append([trial])
        else:
            home.append(trial)
    return packs


def resumable_checkpoints(store: ResultStore) -> dict[str, str]:
    """trial_id -> the newest checkpoint an earlier run left whose epochs all reached Parquet.

    A checkpoint newer than the trial's flushed epoch rows would leave a gap in them, so it is
    passed over for an older one (Tune keeps two per trial).
    """
    selector = pafs.FileSelector(f"{store.path}/_tune", recursive=True, allow_not_found=True)
    flushed: dict[str, int] = {}
    best: dict[str, tuple[int, str]] = {}
    for info in store.fs.get_file_info(selector):
        if info.base_name != META_FILE:
            continue
        folder = info.path.rsplit("/", 1)[0]
        trial_id = folder.rsplit("/", 2)[-2]
        if trial_id not in flushed:
            flushed[trial_id] = max((row["epoch"] for row in store.read("epochs", trial_id)), default=0)
        with store.fs.open_input_stream(info.path) as f:
            epoch = json.loads(f.readall())["epoch"]
        if epoch <= flushed[trial_id] and epoch > best.get(trial_id, (0, ""))[0]:
            best[trial_id] = (epoch, folder)
    return {trial_id: folder for trial_id, (_, folder) in best.items()}


class _Configs:
    """The driver's TrialConfigs of each Tune trial, by member id. A grid's are the ones it expanded,
    found by id; a searcher's, sampled into the base, are validated once, on first sight."""

    def __init__(self, expanded: Iterable[TrialConfig]):
        self.expanded = {t.trial_id: t for t in expanded}
        self.by_tune_trial: dict[str, dict[str, TrialConfig]] = {}

    def of(self, trial) -> dict[str, TrialConfig]:
        if trial.trial_id not in self.by_tune_trial:
            configs = (trial_configs(trial.config) if _sampled(trial.config)
                       else [self.expanded[m["id"]] for m in trial.config["trials"]])
            self.by_tune_trial[trial.trial_id] = {c.trial_id: c for c in configs}
        return self.by_tune_trial[trial.trial_id]

    def name(self, trial) -> str:
        """A Tune trial's name and folder: its (first member's) trial id."""
        ids = list(self.of(trial))
        return ids[0] + (f"-pack{len(ids)}" if len(ids) > 1 else "")


class StoreCallback(tune.Callback):
    """Hands each Tune trial's reports, and its end, to the store's writer. A packed Tune trial's
    members each get their own rows (a report names its member by ID_KEY)."""

    def __init__(self, writer: SweepWriter, configs: _Configs):
        self.writer = writer
        self.configs = configs

    def on_trial_result(self, iteration, trials, trial, result, **info):
        cfg = self.configs.of(trial)[result[ID_KEY]]
        self.writer.add(cfg, result, wall_time_s=result.get("time_total_s"), flush=bool(result.get("checkpointed")))

    def on_trial_complete(self, iteration, trials, trial, **info):
        for cfg in self.configs.of(trial).values():
            self.writer.finish(cfg)

    def on_trial_error(self, iteration, trials, trial, **info):
        # Tune writes the traceback to the trial's local folder first and syncs it to storage later.
        local = Path(trial.error_file) if trial.error_file else None
        text = local.read_text() if local is not None and local.is_file() else trial.get_error()
        for cfg in self.configs.of(trial).values():
            self.writer.finish(cfg, _last_line(str(text or "the trial raised")))


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else text


class ProgressCallback(tune.Callback):
    """One line per finished trial and every `every_s` seconds: done / running / pending, ETA."""

    def __init__(self, total: int, statuses: dict[str, str], every_s: float = 30.0):
        self.total = total
        self.statuses = statuses
        self.every_s = every_s
        self.start = time.monotonic()
        self.logged_at = 0.0
        self.reported = 0

    def on_step_end(self, iteration, trials, **info):
        done = len(self.statuses)
        now = time.monotonic()
        if done == self.reported and now - self.logged_at < self.every_s:
            return
        self.reported, self.logged_at = done, now
        running = sum(len(t.config["trials"]) for t in trials if t.status == "RUNNING")
        elapsed = now - self.start
        eta = f"~{_duration(elapsed / done * (self.total - done))}" if done else "unknown"
        counts = ", ".join(f"{n} {s}" for s, n in status_counts(self.statuses).items() if n)
        _log.info(f"[{_duration(elapsed)}] {done}/{self.total} done{f' ({counts})' if counts else ''}, "
                  f"{running} running, {self.total - done - running} pending, time left {eta}")


def status_counts(statuses: dict[str, str]) -> dict[str, int]:
    return {s: sum(v == s for v in statuses.values()) for s in ("ok", "diverged", "failed")}


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@dataclass(frozen=True)
class SweepSummary:
    total: int
    skipped: int  # finished before this run, `reused` included
    statuses: dict[str, str]
    reused: int = 0  # taken over from other sweeps under the same results root

    @property
    def failed(self) -> list[str]:
        return [t for t, s in self.statuses.items() if s == "failed"]

    def lines(self) -> list[str]:
        counts = status_counts(self.statuses)
        reused = f" ({self.reused} reused from other sweeps)" if self.reused else ""
        return [f"{self.total} trials: {self.skipped} already finished{reused}, "
                + ", ".join(f"{n} {s}" for s, n in counts.items())]


def connect(address: str | None) -> None:
    """Join `address` (or $RAY_ADDRESS, as `ray job submit` sets it), else start an embedded Ray.

    Ray's own loggers log warnings and errors only, in this driver and in every worker of the job:
    their INFO lines (a "Checkpoint successfully created" per checkpoint of every trial, forwarded
    from the workers) would bury the progress lines. Workers' prints and errors still reach the
    console (log_to_driver)."""
    if ray.is_initialized():
        return
    quiet = ray.LoggingConfig(log_level="WARNING")
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or None, log_to_driver=True, logging_config=quiet)
    else:
        # "local": always a fresh embedded Ray, never a `ray start` cluster that happens to run here.
        ray.init(address="local", include_dashboard=False, log_to_driver=True, logging_config=quiet)


@dataclass(frozen=True)
class _Plan:
    """What one mode of sweep (a grid, or an Optuna search) asks of Tune and says about it."""

    total: int  # trials the sweep holds
    todo: int  # trials this run finishes
    lines: tuple[str, ...]  # logged before it starts
    members: Any  # param_space["trials"]: the `_member`s of each Tune trial
    num_samples: int
    search: dict[str, Any]  # TuneConfig's search_alg, if any
    resume: Callable[[dict[str, str]], dict[str, str]]  # the earlier run's checkpoints -> those to use
    finish: Callable[[], None]  # after the last trial


def _grid_plan(sweep: Sweep, store: ResultStore, force: bool) -> _Plan:
    """The trials without a finished result (all of them with `force`), packed as `pack:` asks."""
    spec, trials = sweep.spec, sweep.trials
    finished = {t: s for t, s in store.finished().items() if s in FINISHED}
    todo = [t for t in trials if force or t.trial_id not in finished]
    packs = pack_trials(todo, spec.pack)
    lines = [f"sweep {spec.name!r}: {len(trials)} trials, {len(trials) - len(todo)} already finished, "
             f"{len(todo)} to run (varying: {', '.join(varying_settings(trials)) or 'nothing'}); "
             f"results in {store.uri}"]
    if spec.pack > 1:
        lines.append(f"{len(todo)} trials packed into {len(packs)} packed models")
    todo_ids = {t.trial_id for t in todo}

    def resume(checkpoints: dict[str, str]) -> dict[str, str]:
        kept = {trial_id: path for trial_id, path in checkpoints.items() if trial_id in todo_ids}
        if kept:
            _log.info(f"{len(kept)} unfinished trials continue from their last checkpoint")
        return kept

    return _Plan(len(trials), len(todo), tuple(lines), tune.grid_search([[_member(t) for t in p] for p in packs]),
                 num_samples=1, search={}, resume=resume, finish=lambda: None)


def _search_plan(sweep: Sweep, store: ResultStore, force: bool) -> _Plan:
    """The rest of an Optuna search from the sweep's one base trial; a sampled config that equals an
    interrupted trial's continues from its checkpoint."""
    spec, optuna = sweep.spec, sweep.spec.optuna
    storage = optuna.storage or default_storage(store.uri)
    todo = trials_left(optuna, spec.name, storage)
    line = (f"search {spec.name!r}: {optuna.n_trials} trials, {optuna.n_trials - todo} already finished, "
            f"{todo} to run (searching: {', '.join(optuna.space)}); study in {storage}; results in {store.uri}")
    return _Plan(optuna.n_trials, todo, (line,), [_member(sweep.trials[0])], num_samples=todo,
                 search={"search_alg": make_searcher(optuna, spec.name, storage)},
                 resume=lambda checkpoints: checkpoints, finish=lambda: mark_pareto_front(store, optuna.objectives))


def reuse_finished(sweep: Sweep, store: ResultStore, writer: SweepWriter) -> dict[str, str]:
    """Copy into `store` each of a grid sweep's trials that has no finished result there but
    finished in another sweep under the same results root; trial_id -> the sweep copied from."""
    finished = {t for t, s in store.finished().items() if s in FINISHED}
    sources = store.finished_elsewhere(t.trial_id for t in sweep.trials if t.trial_id not in finished)
    for trial_id, source in sources.items():
        writer.reuse(source, trial_id)
    if sources:
        by_sweep = collections.Counter(source.sweep for source in sources.values())
        _log.info(f"reused {len(sources)} trials finished in other sweeps under the same results root, not "
                  "trained again: " + ", ".join(f"{n} from {name!r}" for name, n in sorted(by_sweep.items())))
    return {trial_id: source.sweep for trial_id, source in sources.items()}


def run_sweep(sweep: Sweep, store: ResultStore, *, force: bool = False, tune_progress: bool = False,
              still_locked: Callable[[], bool] = lambda: True) -> SweepSummary:
    """Run a grid sweep's trials that have no finished result yet (all of them with `force`), or
    the rest of an Optuna search (`optuna:` in the spec, from the sweep's one base trial).

    A grid's trials finished in other sweeps under the same results root are reused (`--force`
    trains them again). `still_locked` says whether this driver still holds the sweep's lock: once
    it is lost, another driver may own the results and nothing sweep-wide is written."""
    spec = sweep.spec
    writer = SweepWriter(store, code_version())
    reused = {} if force or spec.optuna is not None else reuse_finished(sweep, store, writer)
    plan = (_grid_plan if spec.optuna is None else _search_plan)(sweep, store, force)
    for line in plan.lines:
        _log.info(line)
    skipped = plan.total - plan.todo
    if not plan.todo:
        return SweepSummary(plan.total, skipped, {}, len(reused))

    store.remove_temporaries()
    resume_from = plan.resume({} if force else resumable_checkpoints(store))
    for name, value in _TUNE_ENV.items():
        os.environ.setdefault(name, value)
    configs = _Configs(sweep.trials)
    callbacks: list[tune.Callback] = [StoreCallback(writer, configs), ProgressCallback(plan.todo, writer.statuses)]
    tuner = tune.Tuner(
        tune.with_resources(
            tune.with_parameters(_trainable, filesystem=store.fs, resume_from=resume_from),
            {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
        ),
        param_space={
            "trials": plan.members,
            "checkpoint_every": spec.checkpoint_every,
            "threads": math.ceil(spec.resources.cpu),
        },
        tune_config=tune.TuneConfig(
            # No metric/mode here: set on TuneConfig they would make a multi-objective search single.
            num_samples=plan.num_samples,
            # One worker process per slot, kept across trials: a fresh one per trial re-imports
            # torch (~2.5 s a trial). Safe: `train` seeds everything it uses.
            reuse_actors=True,
            max_concurrent_trials=spec.resources.max_concurrent,
            trial_name_creator=configs.name,
            trial_dirname_creator=configs.name,
            **plan.search,
        ),
        run_config=tune.RunConfig(
            name=f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            # Tune's checkpoints live beside the results, on the same (possibly remote) filesystem.
            storage_path=f"{store.path}/_tune",
            storage_filesystem=None if store.is_local else store.fs,
            callbacks=callbacks,
            verbose=1 if tune_progress else 0,
            failure_config=tune.FailureConfig(max_failures=spec.retries),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )
    if not tune_progress:
        # Tune's end-of-run notes (where its own files went, metrics it cannot find because its
        # loggers are off) are noise next to our Parquet store.
        logging.getLogger("ray.tune").setLevel(logging.ERROR)
    tuner.fit()
    if still_locked():
        plan.finish()
    return SweepSummary(plan.total, skipped, dict(writer.statuses), len(reused))


def mark_pareto_front(store: ResultStore, objectives) -> None:
    """Set `on_pareto_front` on every trial row against the sweep's final set of trials."""
    rows = [row for trial_id in store.finished() for row in store.read("trials", trial_id)]
    frame = pl.DataFrame({o.metric: [row[o.metric] for row in rows] for o in objectives},
                         schema={o.metric: pl.Float64 for o in objectives})
    for row, flag in zip(rows, pareto_front(frame, {o.metric: o.mode for o in objectives}).to_list()):
        if row["on_pareto_front"] != flag:
            store.write("trials", row["trial_id"], [{**row, "on_pareto_front": flag}])


def describe(trials: Sequence[TrialConfig]) -> list[str]:
    """One line per trial: its id and the settings that vary across the sweep (for --dry-run)."""
    varying = varying_settings(trials)
    return [f"{t.trial_id}  " + " ".join(f"{k}={json.dumps(t.flat()[k])}" for k in varying) for t in trials]
