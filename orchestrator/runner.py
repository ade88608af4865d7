"""Run a sweep's trials as Ray Tune trials; the driver alone writes the Parquet store.

Workers call `sparsity_core.train` and `ray.tune.report` once per epoch (with a Tune checkpoint every
`checkpoint_every` epochs). `StoreCallback`, on the driver, turns those reports into Parquet rows,
so workers never need the results filesystem.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Tune's automatic CSV/JSON/TensorBoard loggers grow the driver's memory; we write Parquet ourselves.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
# The legacy console output honours verbose=0; our ProgressCallback prints the progress lines.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import polars as pl  # noqa: E402
import pyarrow.fs as pafs  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402
from ray import tune  # noqa: E402

from sparsity_core import EpochMetrics, TrialConfig, pack_key, train, train_packed  # noqa: E402
from sparsity_core.config import alias_paths, set_path  # noqa: E402

from .search import default_storage, make_searcher, pareto_front, trials_left  # noqa: E402
from .spec import SweepSpec, varying_settings  # noqa: E402
from .store import FINISHED, ResultStore  # noqa: E402
from .version import code_version  # noqa: E402

__all__ = ["SweepSummary", "run_sweep", "connect", "describe", "StoreCallback", "trial_configs", "pack_trials",
           "resumable_checkpoints", "mark_pareto_front"]

STATE_FILE = "state.pt"
META_FILE = "meta.json"  # beside the state: its epoch, readable without loading the state
ID_KEY = "sweep_trial_id"  # our trial id in a report; Tune overwrites `trial_id` with its own
FLUSH_EVERY_S = 10.0  # a running trial's epoch rows reach Parquet at least this often
PRUNED_COLUMNS = ("pruned_test_err", "conv_params_pruned_pct", "flops_pruned_pct", "pruned_speedup",
                  "l1norm_pruned_test_err", "slim_pruned_test_err")
FINAL_COLUMNS = ("train_loss", "test_loss", "test_err", "dead_gamma_pct", "dead_act_pct")
EPOCH_COLUMNS = ("epoch", "lr", *FINAL_COLUMNS)
# The per-epoch tables and the columns that identify one of their rows within a trial.
ROW_KEYS = {"epochs": ("epoch",), "layers": ("epoch", "layer"), "filters": ("epoch", "layer", "filter")}


def trial_configs(config: dict[str, Any]) -> list[TrialConfig]:
    """The TrialConfigs of a Tune trial: one, or a pack of them (`pack:` in the sweep). Values a
    searcher sampled (top-level keys named by a setting's alias) are written into each."""
    configs = []
    for base in config["trials"]:
        settings = copy.deepcopy(base)
        for alias, path in alias_paths().items():
            if alias in config:
                set_path(settings, path, config[alias])
        configs.append(TrialConfig.model_validate(settings))
    return configs


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


def pack_trials(trials: list[TrialConfig], size: int) -> list[list[TrialConfig]]:
    """Packs of up to `size` trials that can share one packed model, in sweep order: a trial joins
    the newest pack of its `pack_key` while that has room."""
    packs: list[list[TrialConfig]] = []
    newest: dict[Hashable, list[TrialConfig]] = {}
    for trial in trials:
        key = pack_key(trial) if size > 1 else None
        home = newest.get(key)
        if home is not None and len(home) < size:
            home.append(trial)
        else:
            packs.append([trial])
            if key is not None:
                newest[key] = packs[-1]
    return packs


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


@dataclass
class _Running:
    cfg: TrialConfig
    # table -> row key (epoch first, see ROW_KEYS) -> row
    rows: dict[str, dict[tuple, dict[str, Any]]] = field(default_factory=lambda: {t: {} for t in ROW_KEYS})
    last: dict[str, Any] | None = None
    flushed_at: float = 0.0
    loaded: bool = False


class StoreCallback(tune.Callback):
    """Driver-side writer: epoch/layer/filter rows as results arrive, the trial row at the end.

    Rows are keyed by trial id and epoch, so a trial that restarts (a retry, or a resume from its
    checkpoint) replaces what it reports again instead of duplicating it, and the members of a
    packed Tune trial each get their own files.
    """

    def __init__(self, store: ResultStore, version: str):
        self.store = store
        self.version = version
        self.running: dict[str, _Running] = {}
        self.statuses: dict[str, str] = {}
        self.members: dict[str, dict[str, TrialConfig]] = {}  # Tune trial -> its trial configs by id

    def _configs(self, trial) -> dict[str, TrialConfig]:
        if trial.trial_id not in self.members:
            self.members[trial.trial_id] = {c.trial_id: c for c in trial_configs(trial.config)}
        return self.members[trial.trial_id]

    def on_trial_result(self, iteration, trials, trial, result, **info):
        tid = result[ID_KEY]
        run = self.running.setdefault(tid, _Running(self._configs(trial)[tid]))
        epoch = int(result["epoch"])
        if not run.loaded:  # keep the rows of epochs finished before a resume from a checkpoint
            for table, key in ROW_KEYS.items():
                for row in self.store.read(table, tid):
                    if row["epoch"] < epoch:
                        run.rows[table][tuple(row[k] for k in key)] = row
            run.loaded = True
        new_rows = {
            "epochs": [{k: result[k] for k in EPOCH_COLUMNS}],
            "layers": result["layers"],
            "filters": result["filters"] or [],
        }
        for table, key in ROW_KEYS.items():
            rows = run.rows[table]
            for stale in [k for k in rows if k[0] >= epoch]:  # a restart reports these again
                del rows[stale]
            for row in new_rows[table]:
                row = {"trial_id": tid, **row, "epoch": epoch}
                rows[tuple(row[k] for k in key)] = row
        run.last = result
        # Flushing at each checkpoint keeps the rows of every checkpointed epoch on disk.
        if result.get("checkpointed") or time.monotonic() - run.flushed_at > FLUSH_EVERY_S:
            self._flush(run)

    def _flush(self, run: _Running) -> None:
        for table, rows in run.rows.items():
            if rows:
                self.store.write(table, run.cfg.trial_id, [rows[k] for k in sorted(rows)])
        run.flushed_at = time.monotonic()

    def _finish(self, trial, failure: str | None = None) -> None:
        configs = list(self._configs(trial).values())
        del self.members[trial.trial_id]
        for cfg in configs:
            run = self.running.pop(cfg.trial_id, None) or _Running(cfg)
            self._flush(run)
            last = run.last or {}
            status = "failed" if failure is not None else "diverged" if last.get("diverged") else "ok"
            self.store.write("trials", cfg.trial_id, [{
                "trial_id": cfg.trial_id,
                "sweep": self.store.sweep,
                "status": status,
                **cfg.flat(),
                "epochs_run": last.get("epoch", 0),
                **{k: last.get(k) for k in (*FINAL_COLUMNS, *PRUNED_COLUMNS)},
                "wall_time_s": last.get("time_total_s"),
                "code_version": self.version,
                "error": failure or "",
                "finished_at": dt.datetime.now(dt.timezone.utc),
                "config_json": cfg.model_dump_json(),
            }])
            self.statuses[cfg.trial_id] = status

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        # Tune writes the traceback to the trial's local folder first and syncs it to storage later.
        local = Path(trial.error_file) if trial.error_file else None
        text = local.read_text() if local is not None and local.is_file() else trial.get_error()
        self._finish(trial, _last_line(str(text or "the trial raised")))


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else text


class ProgressCallback(tune.Callback):
    """One line per finished trial and every `every_s` seconds: done / running / pending, ETA."""

    def __init__(self, total: int, statuses: dict[str, str], every_s: float = 30.0, stream=sys.stdout):
        self.total = total
        self.statuses = statuses
        self.every_s = every_s
        self.stream = stream
        self.start = time.monotonic()
        self.printed_at = 0.0
        self.reported = 0

    def on_step_end(self, iteration, trials, **info):
        done = len(self.statuses)
        now = time.monotonic()
        if done == self.reported and now - self.printed_at < self.every_s:
            return
        self.reported, self.printed_at = done, now
        running = sum(len(t.config["trials"]) for t in trials if t.status == "RUNNING")
        elapsed = now - self.start
        eta = f"~{_duration(elapsed / done * (self.total - done))}" if done else "unknown"
        counts = ", ".join(f"{n} {s}" for s, n in status_counts(self.statuses).items() if n)
        print(f"[{_duration(elapsed)}] {done}/{self.total} done{f' ({counts})' if counts else ''}, "
              f"{running} running, {self.total - done - running} pending, time left {eta}",
              file=self.stream, flush=True)


def status_counts(statuses: dict[str, str]) -> dict[str, int]:
    return {s: sum(v == s for v in statuses.values()) for s in ("ok", "diverged", "failed")}


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@dataclass(frozen=True)
class SweepSummary:
    total: int
    skipped: int
    statuses: dict[str, str]

    @property
    def failed(self) -> list[str]:
        return [t for t, s in self.statuses.items() if s == "failed"]

    def lines(self) -> list[str]:
        counts = status_counts(self.statuses)
        return [f"{self.total} trials: {self.skipped} already finished, "
                + ", ".join(f"{n} {s}" for s, n in counts.items())]


def connect(address: str | None) -> None:
    """Join `address` (or $RAY_ADDRESS, as `ray job submit` sets it), else start an embedded Ray."""
    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or None, log_to_driver=True)
    else:
        # "local": always a fresh embedded Ray, never a `ray start` cluster that happens to run here.
        ray.init(address="local", include_dashboard=False, log_to_driver=True, logging_level=logging.WARNING)


def run_sweep(
    spec: SweepSpec,
    trials: list[TrialConfig],
    store: ResultStore,
    *,
    force: bool = False,
    tune_progress: bool = False,
) -> SweepSummary:
    """Run a grid sweep's trials that have no finished result yet (all of them with `force`), or
    the rest of an Optuna search (`spec.optuna`, from the single base trial in `trials`)."""
    finished = {t: s for t, s in store.finished().items() if s in FINISHED}
    if spec.optuna is None:
        todo = [t for t in trials if force or t.trial_id not in finished]
        skipped = len(trials) - len(todo)
        print(f"sweep {spec.name!r}: {len(trials)} trials, {skipped} already finished, {len(todo)} to run "
              f"(varying: {', '.join(varying_settings(trials)) or 'nothing'}); results in {store.uri}", flush=True)
        planned = len(todo)
        packs = pack_trials(todo, spec.pack)
        if spec.pack > 1:
            print(f"{len(todo)} trials packed into {len(packs)} packed models", flush=True)
        trial_space = tune.grid_search([[t.model_dump(mode="json") for t in pack] for pack in packs])
        search = {}
    else:
        storage = spec.optuna.storage or default_storage(str(Path(store.path).parent), spec.name)
        planned = trials_left(spec.optuna, spec.name, storage)
        skipped = spec.optuna.n_trials - planned
        print(f"search {spec.name!r}: {spec.optuna.n_trials} trials, {skipped} already finished, {planned} to run "
              f"(searching: {', '.join(spec.optuna.space)}); study in {storage}; results in {store.uri}", flush=True)
        trial_space = [trials[0].model_dump(mode="json")]
        search = {"search_alg": make_searcher(spec.optuna, spec.name, storage)}
    if not planned:
        return SweepSummary(skipped + planned, skipped, {})

    store.remove_temporaries()
    resume_from = {} if force else resumable_checkpoints(store)
    if spec.optuna is None:
        todo_ids = {t.trial_id for t in todo}
        resume_from = {trial_id: path for trial_id, path in resume_from.items() if trial_id in todo_ids}
        if resume_from:
            print(f"{len(resume_from)} unfinished trials continue from their last checkpoint", flush=True)
    writer = StoreCallback(store, code_version())
    callbacks: list[tune.Callback] = [writer, ProgressCallback(planned, writer.statuses)]
    tuner = tune.Tuner(
        tune.with_resources(
            tune.with_parameters(_trainable, filesystem=store.fs, resume_from=resume_from),
            {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
        ),
        param_space={
            "trials": trial_space,
            "checkpoint_every": spec.checkpoint_every,
            "threads": math.ceil(spec.resources.cpu),
        },
        tune_config=tune.TuneConfig(
            # No metric/mode here: set on TuneConfig they would make a multi-objective search single.
            num_samples=1 if spec.optuna is None else planned,
            # One worker process per slot, kept across trials: a fresh one per trial re-imports
            # torch (~2.5 s a trial). Safe: `train` seeds everything it uses.
            reuse_actors=True,
            max_concurrent_trials=spec.resources.max_concurrent,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
            **search,
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
    if spec.optuna is not None:
        mark_pareto_front(store, spec.optuna.objectives)
    return SweepSummary(skipped + planned, skipped, dict(writer.statuses))


def mark_pareto_front(store: ResultStore, objectives) -> None:
    """Set `on_pareto_front` on every trial row against the sweep's final set of trials."""
    rows = [row for trial_id in store.finished() for row in store.read("trials", trial_id)]
    frame = pl.DataFrame({o.metric: [row[o.metric] for row in rows] for o in objectives},
                         schema={o.metric: pl.Float64 for o in objectives})
    for row, flag in zip(rows, pareto_front(frame, objectives).to_list()):
        if row["on_pareto_front"] != flag:
            store.write("trials", row["trial_id"], [{**row, "on_pareto_front": flag}])


def _trial_name(trial) -> str:
    cfgs = trial_configs(trial.config)
    return cfgs[0].trial_id + (f"-pack{len(cfgs)}" if len(cfgs) > 1 else "")


def describe(trials: list[TrialConfig]) -> list[str]:
    """One line per trial: its id and the settings that vary across the sweep (for --dry-run)."""
    varying = varying_settings(trials)
    return [f"{t.trial_id}  " + " ".join(f"{k}={json.dumps(t.flat()[k])}" for k in varying) for t in trials]
