"""Run a sweep's trials as Ray Tune trials; the driver alone writes the Parquet store.

Workers call `sparsity_core.train` (the loop) and `ray.tune.report` once per epoch (with a Tune checkpoint every
`checkpoint_every` epochs). On the driver, `StoreCallback` hands those reports to the store's
`SweepWriter`, so workers never need the results filesystem. Packs are sized before Tune starts:
with `pack: auto` (or a fixed pack off the CPU) one Ray task with a Tune trial's resources probes
the device (`sparsity_core.capacity`). Progress lines go to the logger
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
from collections import Counter
from collections.abc import Callable, Container, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.fs as pafs
import ray
import torch
from ray import tune

from sparsity_core import EpochMetrics, TrialConfig, pack_key, train, train_packed
from sparsity_core.capacity import PackProbe, probe_packs
from sparsity_core.config import alias_paths

from .guard import GuardError
from .results import pareto_front
from .scheduler import MultiObjectiveASHA
from .search import default_storage, make_searcher
from .spec import Sweep, SweepSpec, trial_config, varying_settings
from .store import COMPLETED, FINISHED, ResultStore, SweepWriter
from .version import code_version

__all__ = ["SweepSummary", "run_sweep", "connect", "StoreCallback", "trial_configs", "pack_trials",
           "resumable_checkpoints", "reuse_finished", "mark_pareto_front"]

_log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
META_FILE = "meta.json"  # beside the state: its epoch, readable without loading the state
ID_KEY = "sweep_trial_id"  # our trial id in a report; Tune overwrites `trial_id` with its own
# Set for Tune when a sweep starts: its automatic CSV/JSON/TensorBoard loggers grow the driver's
# memory (we write Parquet ourselves), and only its legacy console output honours verbose=0 (our
# ProgressCallback logs the progress lines).
_TUNE_ENV = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "RAY_AIR_NEW_OUTPUT": "0"}
_PROBE_TIMEOUT_S = 900  # a cluster may first start a GPU node for the pack probe


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
    """One Tune trial: train its config, or a pack of configs as one packed model; report each
    trial's epochs, and checkpoint when the trainer hands over its state.

    It continues from Tune's own checkpoint when Tune retries it, else from `resume_from` (the
    driver's pick among checkpoints an earlier, interrupted run left behind) when that holds
    exactly this Tune trial's trials.
    """
    torch.set_num_threads(max(1, int(config["threads"])))
    cfgs = trial_configs(config)
    ids = [cfg.trial_id for cfg in cfgs]
    resume = _resume_state(ids, filesystem, resume_from)
    reported: dict[str, int] = {}  # trial id -> the last epoch it reported

    def report(metrics: dict[int, EpochMetrics], state: dict[str, Any] | None) -> None:
        records = [{**m.to_record(), ID_KEY: ids[i]} for i, m in metrics.items()]
        reported.update({ids[i]: m.epoch for i, m in metrics.items()})
        for record in records:
            # The driver writes a trial's rows at each checkpoint, and at once when a pack-mate
            # diverges: the pack's Tune trial runs on, and that trial reports no more.
            if state is not None or record["diverged"]:
                record["checkpointed"] = True
        *others, last = records  # a pack's checkpoint rides on its last report of the epoch
        for record in others:
            tune.report(record)
        if state is None:
            tune.report(last)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / STATE_FILE)
            meta = {"epoch": state["epoch"], "trials": {trial_id: reported[trial_id] for trial_id in ids}}
            (Path(folder) / META_FILE).write_text(json.dumps(meta))
            tune.report(last, checkpoint=tune.Checkpoint.from_directory(folder))

    if len(cfgs) == 1:
        train(cfgs[0], lambda metrics, state: report({0: metrics}, state), resume=resume,
              checkpoint_every=config["checkpoint_every"])
    else:
        train_packed(cfgs, report, resume=resume, checkpoint_every=config["checkpoint_every"])


def _resume_state(ids: list[str], filesystem, resume_from: dict[str, str]) -> dict[str, Any] | None:
    """Tune's checkpoint of this Tune trial (a retry), else the one `resume_from` names for every
    trial in `ids`; its state when it holds exactly those trials, in that order, else None."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        folders = {resume_from.get(trial_id) for trial_id in ids}
        if len(folders) != 1 or None in folders:
            return None
        checkpoint = tune.Checkpoint(folders.pop(), filesystem=filesystem)
    with checkpoint.as_directory() as folder:
        if list(json.loads((Path(folder) / META_FILE).read_text())["trials"]) != ids:
            return None
        return torch.load(Path(folder) / STATE_FILE, weights_only=False)


def pack_trials(trials: list[TrialConfig], size: int | Mapping[Hashable, int],
                kept: Iterable[Sequence[str]] = ()) -> list[list[TrialConfig]]:
    """Packs of trials that can share one packed model, in sweep order. `size` caps a pack: one
    number, or one per `pack_key` (1 for a key it lacks). A key's trials are split into as few packs
    as its cap allows, as even as can be (18 trials at 16: two packs of 9; at 4: 4, 4, 4, 3, 3), a
    trial joining the newest pack of its key while that has room. `kept` lists trial ids that stay
    one pack as they are (an interrupted run's packs, which continue from their checkpoints) where
    all of them are in `trials`."""
    position = {t.trial_id: i for i, t in enumerate(trials)}
    packs = [[trials[position[i]] for i in ids] for ids in {tuple(ids) for ids in kept}
             if len(ids) > 1 and all(i in position for i in ids)]
    taken = {t.trial_id for pack in packs for t in pack}
    if len(taken) < sum(map(len, packs)):  # kept packs that share a trial: none is kept
        packs, taken = [], set()
    rest = [t for t in trials if t.trial_id not in taken]
    keys = [None if size == 1 else pack_key(t) for t in rest]
    caps = {key: 1 if key is None else size if isinstance(size, int) else size.get(key, 1) for key in keys}
    # Each key's pack sizes, largest first: n trials in ceil(n / cap) packs differing by one at most.
    plans = {}
    for key, n in Counter(keys).items():
        count = math.ceil(n / caps[key])
        plans[key] = iter([n // count + 1] * (n % count) + [n // count] * (count - n % count))
    newest: dict[Hashable, tuple[list[TrialConfig], int]] = {}
    for trial, key in zip(rest, keys):
        home, room = newest.get(key, ([], 0))
        if len(home) < room:
            home.append(trial)
        else:
            packs.append([trial])
            newest[key] = (packs[-1], next(plans[key]))
    return sorted(packs, key=lambda pack: position[pack[0].trial_id])


def _kept_packs(checkpoints: Mapping[str, str]) -> list[list[str]]:
    """The packs an earlier run's checkpoints hold: trial ids by checkpoint folder."""
    by_folder: dict[str, list[str]] = {}
    for trial_id, folder in checkpoints.items():
        by_folder.setdefault(folder, []).append(trial_id)
    return list(by_folder.values())


def _probe_packs(jobs: list[tuple[list[TrialConfig], int]], threads: int) -> list[PackProbe]:
    torch.set_num_threads(threads)
    return [probe_packs(cfgs, largest) for cfgs, largest in jobs]


def _probe(spec: SweepSpec, jobs: list[tuple[list[TrialConfig], int]]) -> list[PackProbe]:
    """`probe_packs` of each job, in one Ray task with a Tune trial's resources: on a GPU like the
    ones the packs will train on, alone on it (one job after another), in a process that exits
    after it (`max_calls=1`), so its CUDA memory is free again for the trials."""
    task = ray.remote(num_cpus=spec.resources.cpu, num_gpus=spec.resources.gpu, max_calls=1)(_probe_packs)
    try:
        return ray.get(task.remote(jobs, math.ceil(spec.resources.cpu)), timeout=_PROBE_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        raise GuardError(f"pack: {spec.pack}: no Ray worker with {spec.resources.cpu:g} CPUs and "
                         f"{spec.resources.gpu:g} GPUs ran the pack probe within {_PROBE_TIMEOUT_S} s; add GPU "
                         "workers to the cluster, or set pack to a number of trials on device: cpu") from None
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, ValueError):  # the device, the dataset or the trials refused, as a trial would
            raise GuardError(f"pack: {spec.pack}: the pack probe refused: {e.cause}") from None
        raise


def _pack_sizes(spec: SweepSpec, trials: list[TrialConfig]) -> tuple[int | dict[Hashable, int], list[str]]:
    """Each pack key's cap on its packs, and lines to log: `pack:` itself, or with `pack: auto`
    the size a probe on the trials' own resources found best (sparsity_core.capacity). Off the CPU
    a fixed size is first checked against the memory the probe measured. Raises GuardError, with
    the fix, where a pack cannot fit."""
    if spec.pack == 1 or (spec.pack != "auto" and spec.device == "cpu"):
        return spec.pack, []
    groups: dict[Hashable, list[TrialConfig]] = {}
    for trial in trials:
        key = pack_key(trial)
        if key is not None:
            groups.setdefault(key, []).append(trial)
    groups = {key: group for key, group in groups.items() if len(group) > 1}
    auto = spec.pack == "auto"
    # A fixed size needs memory at two sizes only; `auto` doubles while that pays.
    jobs = [(group, len(group)) if auto else (group[:2], 2) for group in groups.values()]
    probes = _probe(spec, jobs) if jobs else []
    varying = varying_settings(group[0] for group in groups.values())
    sizes: dict[Hashable, int] = {}
    lines = []
    for (key, group), probe in zip(groups.items(), probes):
        what = " ".join(f"{k}={json.dumps(group[0].flat()[k])}" for k in varying) or "this sweep"
        fit = probe.largest_fit()
        if fit == 0:
            raise GuardError(f"pack: {spec.pack}: one trial of {what} does not fit the device ({probe.describe()}); "
                             "lower train.batch_size, model.width or dataset.image_size, or use a GPU with more memory")
        want = len(group) if auto else min(int(spec.pack), len(group))
        if not auto and fit is not None and want > fit:
            need = probe.need_bytes(want) or 0.0
            raise GuardError(f"pack: {spec.pack}: a pack of {want} trials of {what} needs about "
                             f"{need / 2**30:.1f} GiB of device memory ({probe.describe()}); {fit} fit: "
                             f"set pack: {fit} (or pack: auto)")
        sizes[key] = probe.best() if auto else want
        if auto:
            lines.append(f"pack: auto: {len(group)} trials of {what} in packs of up to {sizes[key]} "
                         f"({probe.describe()})")
    return sizes, lines


def resumable_checkpoints(store: ResultStore) -> dict[str, str]:
    """trial_id -> the newest checkpoint an earlier run left whose epochs all reached Parquet.

    A checkpoint's meta.json names the trials it holds (one, or a pack's) and the last epoch each
    had reported. One newer than any of its trials' flushed epoch rows would leave a gap in them,
    so it is passed over for an older one (Tune keeps two per Tune trial). Each trial of a pack's
    checkpoint maps to it; `_trainable` resumes only from one that holds exactly its trials.
    """
    selector = pafs.FileSelector(f"{store.path}/_tune", recursive=True, allow_not_found=True)
    flushed: dict[str, int] = {}
    best: dict[str, tuple[int, str]] = {}
    for info in store.fs.get_file_info(selector):
        if info.base_name != META_FILE:
            continue
        with store.fs.open_input_stream(info.path) as f:
            meta = json.loads(f.readall())
        trials = meta.get("trials", {})  # none named by the meta.json of an older version: not resumed
        for trial_id in trials:
            if trial_id not in flushed:
                flushed[trial_id] = max((row["epoch"] for row in store.read("epochs", trial_id)), default=0)
        if not trials or any(epoch > flushed[trial_id] for trial_id, epoch in trials.items()):
            continue
        for trial_id in trials:
            if meta["epoch"] > best.get(trial_id, (0, ""))[0]:
                best[trial_id] = (meta["epoch"], info.path.rsplit("/", 1)[0])
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
    members each get their own rows (a report names its member by ID_KEY). `stopped`: Tune ids of
    trials an early-stopping scheduler stopped (filled as the sweep runs)."""

    def __init__(self, writer: SweepWriter, configs: _Configs, stopped: Container[str] = frozenset()):
        self.writer = writer
        self.configs = configs
        self.stopped = stopped

    def on_trial_result(self, iteration, trials, trial, result, **info):
        cfg = self.configs.of(trial)[result[ID_KEY]]
        self.writer.add(cfg, result, wall_time_s=result.get("time_total_s"), flush=bool(result.get("checkpointed")))

    def on_trial_complete(self, iteration, trials, trial, **info):
        for cfg in self.configs.of(trial).values():
            self.writer.finish(cfg, stopped=trial.trial_id in self.stopped)

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
    return {s: sum(v == s for v in statuses.values()) for s in (*FINISHED, "failed")}


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
    # Tune ids of trials stopped early -> TuneConfig's search_alg, if any
    search: Callable[[Container[str]], dict[str, Any]]
    resume: Callable[[dict[str, str]], dict[str, str]]  # the earlier run's checkpoints -> those to use
    earlier: tuple[str, ...]  # finished trials this run leaves as they are
    finish: Callable[[], None]  # after the last trial


def _finished_trials(spec: SweepSpec, store: ResultStore) -> tuple[dict[str, str], list[str]]:
    """trial_id -> status of each trial in `store` that a run of `spec` leaves as it is, and lines
    to log. `FINISHED` ones, except that a trial an early-stopping rule stopped counts only while
    the sweep still has `early_stopping:`: without it the tables would silently lack that trial, so
    it continues from its last checkpoint (or runs again)."""
    statuses = store.finished()
    if spec.early_stopping is not None:
        return {t: s for t, s in statuses.items() if s in FINISHED}, []
    stopped = sum(s == "stopped" for s in statuses.values())
    lines = [f"{stopped} trials stopped early by an earlier run's early_stopping are unfinished: the sweep "
             "no longer stops early, so they run to the end"] if stopped else []
    return {t: s for t, s in statuses.items() if s in COMPLETED}, lines


def _grid_plan(sweep: Sweep, store: ResultStore, force: bool, checkpoints: dict[str, str]) -> _Plan:
    """The trials without a finished result (all of them with `force`), packed as `pack:` asks."""
    spec, trials = sweep.spec, sweep.trials
    finished, notes = _finished_trials(spec, store)
    todo = [t for t in trials if force or t.trial_id not in finished]
    sizes, probed = _pack_sizes(spec, todo)
    # An interrupted run's packs stay as they were, whatever the sizes now: they resume.
    kept = _kept_packs(checkpoints) if spec.pack != 1 else []
    packs = pack_trials(todo, sizes, kept)
    lines = [f"sweep {spec.name!r}: {len(trials)} trials, {len(trials) - len(todo)} already finished, "
             f"{len(todo)} to run (varying: {', '.join(varying_settings(trials)) or 'nothing'}); "
             f"results in {store.uri}", *notes, *probed]
    if spec.pack != 1:
        lines.append(f"{len(todo)} trials packed into {len(packs)} packed models")
    todo_ids = {t.trial_id for t in todo}

    def resume(checkpoints: dict[str, str]) -> dict[str, str]:
        kept = {trial_id: path for trial_id, path in checkpoints.items() if trial_id in todo_ids}
        if kept:
            _log.info(f"{len(kept)} unfinished trials continue from their last checkpoint")
        return kept

    return _Plan(len(trials), len(todo), tuple(lines), tune.grid_search([[_member(t) for t in p] for p in packs]),
                 num_samples=1, search=lambda stopped: {}, resume=resume,
                 earlier=tuple(t for t in finished if t not in todo_ids), finish=lambda: None)


def _search_plan(sweep: Sweep, store: ResultStore, force: bool, checkpoints: dict[str, str]) -> _Plan:
    """The rest of an Optuna search from the sweep's one base trial: `n_trials` less the trials
    finished in the store (the source of truth, whatever states the study holds: a diverged trial
    is FAIL there, one whose driver died RUNNING). A sampled config that equals an interrupted
    trial's continues from its checkpoint (a finished trial's is not resumed)."""
    spec, optuna = sweep.spec, sweep.spec.optuna
    storage = optuna.storage or default_storage(store.uri)
    finished, notes = _finished_trials(spec, store)
    todo = max(0, optuna.n_trials - len(finished))
    line = (f"search {spec.name!r}: {optuna.n_trials} trials, {optuna.n_trials - todo} already finished, "
            f"{todo} to run (searching: {', '.join(optuna.space)}); study in {storage}; results in {store.uri}")
    return _Plan(optuna.n_trials, todo, (line, *notes), [_member(sweep.trials[0])], num_samples=todo,
                 search=lambda stopped: {"search_alg": make_searcher(optuna, spec.name, storage, stopped)},
                 resume=lambda checkpoints: {t: p for t, p in checkpoints.items() if t not in finished},
                 earlier=tuple(finished), finish=lambda: mark_pareto_front(store, optuna.objectives))


def reuse_finished(sweep: Sweep, store: ResultStore, writer: SweepWriter) -> dict[str, str]:
    """Copy into `store` each of a grid sweep's trials that has no finished result there but
    finished in another sweep under the same results root; trial_id -> the sweep copied from."""
    finished, _ = _finished_trials(sweep.spec, store)
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
    checkpoints = {} if force else resumable_checkpoints(store)  # an earlier, interrupted run's
    plan = (_grid_plan if spec.optuna is None else _search_plan)(sweep, store, force, checkpoints)
    for line in plan.lines:
        _log.info(line)
    skipped = plan.total - plan.todo
    if not plan.todo:
        # A driver stopped after the last trial (or one that lost its lock) may have left the
        # sweep-wide step undone; `finish` is idempotent.
        if still_locked():
            plan.finish()
        return SweepSummary(plan.total, skipped, {}, len(reused))

    store.remove_temporaries()
    resume_from = plan.resume(checkpoints)
    for name, value in _TUNE_ENV.items():
        os.environ.setdefault(name, value)
    configs = _Configs(sweep.trials)
    scheduler = _scheduler(sweep, store, plan.earlier)
    stopped = scheduler.stopped if scheduler is not None else frozenset()
    callbacks: list[tune.Callback] = [StoreCallback(writer, configs, stopped),
                                      ProgressCallback(plan.todo, writer.statuses)]
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
            scheduler=scheduler,
            **plan.search(stopped),
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


def _scheduler(sweep: Sweep, store: ResultStore, earlier: Iterable[str]) -> MultiObjectiveASHA | None:
    """The sweep's early-stopping scheduler (None without `early_stopping:`), its rule already
    holding the rung values of `earlier` trials, so a resumed sweep judges new trials against them.

    Recorded without decisions, so their order does not matter. Judge and scheduler name trials by
    our trial id (ID_KEY), the name the earlier run's rows carry.
    """
    judge = sweep.judge()
    if judge is None:
        return None
    for trial_id in earlier:
        for row in store.read("epochs", trial_id):
            judge.record(trial_id, row["epoch"], row)
    _log.info(f"early stopping at epochs {', '.join(map(str, judge.rungs))}: the best 1/{judge.reduction_factor:g} "
              f"by {', '.join(f'{m} ({mode})' for m, mode in judge.objectives)} go on, once {judge.min_trials} "
              f"trials reached a rung ({max(map(len, judge.recorded.values()))} earlier trials there already)")
    return MultiObjectiveASHA(judge, key_attr=ID_KEY)


def mark_pareto_front(store: ResultStore, objectives) -> None:
    """Set `on_pareto_front` on every trial row against the sweep's final set of trials: over the
    completed ones (failed ones, without metrics, are off it); a stopped trial's flag is null, its
    metrics being a rung's."""
    rows = [row for trial_id in store.finished() for row in store.read("trials", trial_id)]
    compared = [row for row in rows if row["status"] != "stopped"]
    frame = pl.DataFrame({o.metric: [row[o.metric] for row in compared] for o in objectives},
                         schema={o.metric: pl.Float64 for o in objectives})
    front = pareto_front(frame, {o.metric: o.mode for o in objectives}).to_list()
    flags = dict(zip((row["trial_id"] for row in compared), front))
    for row in rows:
        flag = flags.get(row["trial_id"])
        if row["on_pareto_front"] != flag:
            store.write("trials", row["trial_id"], [{**row, "on_pareto_front": flag}])

