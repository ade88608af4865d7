"""The paper's claims checked on a sweep's per-seed results, and on the low-gradient simulation (claim 9).

A claim is a set of comparisons between configurations that differ only in the settings the claim
varies. Each comparison sets the two sides' per-seed values apart (`orchestrator.stats`): the effect
(left minus right) with its interval, and a status against the claim's threshold. `check_claims`
aggregates a claim's comparisons by `RULE`; `claims_table` flattens everything for claims.csv.
The claims' wording and numbers come from the paper's facts (shared/paper/README.md).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import polars as pl

from sparsity_core.config import REMEDY_SETTINGS, alias_paths

from .results import CONFIG_COLUMNS, format_setting, implicit_trials, varying_settings
from .stats import TOO_FEW_SEEDS, Interval, Sample, Status, above, difference, mean_of, too_few, within

__all__ = [
    "Verdict", "RULE", "SPARSITY", "Side", "Comparison", "Outcome", "Evidence", "Claim", "CLAIMS",
    "configurations", "pairs",
    "check_claims", "claims_table", "FAR_MORE", "MUCH_LESS", "SLIGHTLY", "UNCHANGED", "SIMILAR_STRENGTH",
    "SETTLED", "LOW_STRENGTH", "SGD_KEEPS", "lowgrad_decay", "MATCHED_ERR", "COMPARABLE", "EXPLICIT",
    "METHOD_SETTINGS", "RUN_SETTINGS",
]

Verdict = Literal["holds", "fails", "mixed", "inconclusive", "not testable"]
RULE = ("A claim **holds** when every comparison it counts holds; **fails** when at least one fails and "
        "none holds; is **mixed** when some hold and some fail; is **inconclusive** when none fails but "
        "not all hold (an interval straddles the threshold, or a side has too few seeds); is **not "
        "testable** when the data hold no comparison for it. The comparisons that do not hold are named, "
        "an inconclusive one with its reason where it has one (a side with one seed: "
        f"\"{TOO_FEW_SEEDS}\").")

SPARSITY = "dead_gamma_pct"  # the claims' measure: total % of filters dead by gamma at the last epoch
_METRICS = (SPARSITY, "test_err", "pruned_test_err", "conv_params_pruned_pct", "flops_pruned_pct")

# Thresholds, from the paper's own numbers (each claim's `test` says which).
FAR_MORE = 2.0  # claim 1: Adam > 2 x SGD (the paper: 83% vs 27%, 3.1x)
MUCH_LESS = 0.5  # claim 4: AMSGrad < 0.5 x Adam (the paper: 13% vs 47%, 0.28x)
SLIGHTLY = 0.25  # claims 5, 6: a change of at most a quarter (the paper: 47 -> 41-43%, 46 -> 51%)
UNCHANGED = 0.5  # claim 8: pruned vs unpruned test error within 0.5 points (the paper: ~0.5)
SIMILAR_STRENGTH = 2.0  # claim 2: WD within 2x of the L2 strength (the paper: L2 1e-4 vs WD 1e-4, 2e-4)


@dataclass(frozen=True)
class Side:
    """One side of a comparison: its label (a configuration's, or what it is), its metric over
    seeds, and how the report shows it."""

    label: str
    mean: float | None
    std: float | None
    n: int
    text: str


@dataclass(frozen=True)
class Comparison:
    """Two configurations (or simulated optimizers) set apart. `effect` is left minus right; the
    status is decided on `tested` (`test` says what must hold), which is `effect` unless the
    threshold scales a side, and, for "only slightly", also on `bounded` (`bound`: the change's
    size, sides swapped): it holds when both hold and fails when either fails. `why`: what keeps an
    inconclusive comparison from being decided, where it is not an interval that straddles the
    threshold (TOO_FEW_SEEDS: a side with one seed)."""

    name: str
    left: Side
    right: Side
    effect: Interval
    test: str
    tested: Interval
    status: Status
    counted: bool = True
    bound: str = ""
    bounded: Interval | None = None
    decimals: int = 1  # how the report shows effect and tested
    effect_text: str = ""  # shown instead of the effect's interval (claim 9: a speed-up)
    tested_text: str = ""
    why: str = ""


@dataclass(frozen=True)
class Outcome:
    comparisons: list[Comparison] = field(default_factory=list)
    note: str = ""  # what was left out and why, how many configurations qualified
    untestable: str = ""  # what data the claim needs, when it has no comparison


@dataclass(frozen=True)
class Evidence:
    """What the claims are checked on: `configs`, the `configurations(...)` whose dead filters were
    removed (prune.method none: claims 1-8 are about implicit sparsity), `pruning`, every
    configuration with its pruning (claim 10), and the low-gradient simulation."""

    configs: pl.DataFrame
    lowgrad: pl.DataFrame | None = None
    pruning: pl.DataFrame | None = None


@dataclass(frozen=True)
class Claim:
    number: int
    text: str  # what the paper states
    source: str  # where it states it, with its numbers
    test: str  # how the data test it: which comparisons count, the threshold
    check: Callable[[Evidence], Outcome]


# --- configurations and pairs ---------------------------------------------------------------------


def configurations(trials: pl.DataFrame, metrics: Sequence[str] = _METRICS) -> pl.DataFrame:
    """One row per configuration of `results.per_trial` (every setting but the seed): its settings,
    `config` label, and each of `metrics` as a list of per-seed values, in seed order."""
    present = [m for m in metrics if m in trials.columns]
    out = trials.sort("seed").group_by(CONFIG_COLUMNS, maintain_order=True).agg(
        pl.col("config").first(), *(pl.col(m) for m in present))
    sortable = [c for c in varying_settings(out) if not isinstance(out.schema[c], pl.List)]
    return out.sort(sortable, nulls_last=True) if sortable else out


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _setting(column: str, value: Any) -> Any:
    """A setting as configurations are paired on it. A remedy that only sets settings
    (REMEDY_SETTINGS) trained exactly what its row's settings say, so it pairs as no remedy:
    `remedy: leaky_relu` (activation leaky_relu) against ReLU is claim 5's comparison."""
    if column == "remedy" and value in REMEDY_SETTINGS:
        return "none"
    return _hashable(value)


def _key(row: dict, free: Sequence[str]) -> tuple:
    return tuple(_setting(c, row[c]) for c in CONFIG_COLUMNS if c not in free)


def pairs(configs: pl.DataFrame, free: Sequence[str], left: pl.Expr, right: pl.Expr) -> list[tuple[dict, dict]]:
    """(a, b) for configurations a in `left`, b in `right` that agree on every setting but `free`."""
    by_key: dict[tuple, list[dict]] = defaultdict(list)
    for b in configs.filter(right).to_dicts():
        by_key[_key(b, free)].append(b)
    return [(a, b) for a in configs.filter(left).to_dicts() for b in by_key[_key(a, free)]]


def _neighbours(configs: pl.DataFrame, axis: str, where: pl.Expr) -> list[tuple[dict, dict]]:
    """(lower, higher) for configurations at neighbouring values of `axis`, all else equal. Two
    configurations at the same value (a remedy that only sets settings, beside those settings) are
    the same training, never a comparison."""
    by_key: dict[tuple, list[dict]] = defaultdict(list)
    for row in configs.filter(where).to_dicts():
        by_key[_key(row, [axis])].append(row)
    out = []
    for rows in by_key.values():
        at: dict[Any, list[dict]] = defaultdict(list)
        for row in rows:
            at[row[axis]].append(row)
        levels = sorted(at)
        out += [(a, b) for low, high in zip(levels, levels[1:]) for a in at[low] for b in at[high]]
    return out


def _settings(row: dict, keys: Sequence[str]) -> str:
    return " ".join(f"{k}={format_setting(_hashable(row[k]))}" for k in keys)


def _context(row: dict, free: Sequence[str]) -> str:
    """The label's settings other than `free`: what the two sides share."""
    return " ".join(p for p in row["config"].split() if p.split("=", 1)[0] not in free)


def _name(a: dict, b: dict, free: Sequence[str], what: str = "") -> str:
    shared = _context(a, free)
    return f"{_settings(a, free)} vs {_settings(b, free)}" + (f" at {shared}" if shared else "") + what


def _sample(row: dict, metric: str = SPARSITY) -> Sample:
    return Sample.of(row.get(metric) or [])


def _side(label: str, sample: Sample, decimals: int = 1, prefix: str = "") -> Side:
    if not sample.n:
        return Side(label, None, None, 0, f"{prefix}no value")
    spread = "" if sample.std is None else f" ± {sample.std:.{decimals}f}"
    return Side(label, sample.mean, sample.std, sample.n, f"{prefix}{sample.mean:.{decimals}f}{spread} (n={sample.n})")


def _contrast(left: str, right: str, factor: float) -> str:
    return f"{left} - {right} > 0" if factor == 1.0 else f"{left} - {factor:g} x {right} > 0"


def _compare(a: dict, b: dict, free: Sequence[str], sides: tuple[str, str], factor: float = 1.0, what: str = "",
             bound: float | None = None, metric: str = SPARSITY) -> Comparison:
    """a (left) vs b (right) on `metric`, named by the `free` settings they differ in and `sides`
    (short names of a and b for the test's text): the claim needs mean(a) - factor * mean(b) > 0
    and, with a `bound` k, mean(b) - k * mean(a) > 0."""
    left, right = _sample(a, metric), _sample(b, metric)
    effect = difference(left, right)
    tested = effect if factor == 1.0 else difference(left, right, factor)
    bounded = None if bound is None else difference(right, left, bound)
    statuses = {above(tested), *(() if bounded is None else (above(bounded),))}
    status: Status = "fails" if "fails" in statuses else "holds" if statuses == {"holds"} else "inconclusive"
    return Comparison(_name(a, b, free, what), _side(a["config"], left), _side(b["config"], right), effect,
                      _contrast(*sides, factor), tested, status,
                      bound="" if bound is None else _contrast(*reversed(sides), bound), bounded=bounded,
                      why=_too_few(left, right))


def _too_few(*samples: Sample) -> str:
    return TOO_FEW_SEEDS if too_few(*samples) else ""


def _informative(a: dict, b: dict) -> bool:
    """Dead filters on at least one side: with none anywhere, training was too short to show a direction."""
    return any(v for v in (*_sample(a).values, *_sample(b).values))


def _measured(a: dict, b: dict) -> bool:
    return _sample(a).n > 0 and _sample(b).n > 0


def _outcome(found: list[tuple[dict, dict]], compare: Callable[[dict, dict], list[Comparison]],
             untestable: str) -> Outcome:
    measured = [(a, b) for a, b in found if _measured(a, b)]
    informative = [(a, b) for a, b in measured if _informative(a, b)]
    skipped = len(measured) - len(informative)
    note = f"{skipped} pair(s) left out: no dead filters on either side" if skipped else ""
    if not informative:
        return Outcome(note=note, untestable=("no pair with dead filters on either side; train longer or "
                                              "regularize more" if skipped else untestable))
    return Outcome([c for a, b in informative for c in compare(a, b)], note)


def _is(column: str, value: Any) -> pl.Expr:
    return pl.col(column) == value


# --- claims 1-8: the sweep's configurations -------------------------------------------------------


def claim1_adam_vs_sgd(ev: Evidence) -> Outcome:
    l2 = _is("reg", "l2")
    found = pairs(ev.configs, ["optimizer"], l2 & _is("optimizer", "adam"), l2 & _is("optimizer", "sgd"))
    return _outcome(found, lambda a, b: [_compare(a, b, ["optimizer"], ("adam", "sgd"), FAR_MORE)],
                    "needs Adam and SGD, both with L2 at the same strength, otherwise equal")


def claim2_adam_l2_vs_wd(ev: Evidence) -> Outcome:
    adam = _is("optimizer", "adam")
    free = ["reg", "strength"]
    found = [(a, b) for a, b in pairs(ev.configs, free, adam & _is("reg", "l2"), adam & _is("reg", "wd"))
             if a["strength"] > 0 and 1 / SIMILAR_STRENGTH <= b["strength"] / a["strength"] <= SIMILAR_STRENGTH]
    return _outcome(found, lambda a, b: [_compare(a, b, free, ("l2", "wd"))],
                    f"needs Adam with L2 and with WD within {SIMILAR_STRENGTH:g}x of its strength, otherwise equal")


def claim3_strength(ev: Evidence) -> Outcome:
    found = _neighbours(ev.configs, "strength", pl.col("reg").is_in(["l2", "wd"]))
    return _outcome([(b, a) for a, b in found], lambda a, b: [_compare(a, b, ["strength"], ("stronger", "weaker"))],
                    "needs two strengths of L2 or WD, otherwise equal")


def claim4_amsgrad_vs_adam(ev: Evidence) -> Outcome:
    l2 = _is("reg", "l2")
    found = pairs(ev.configs, ["optimizer"], l2 & _is("optimizer", "adam"), l2 & _is("optimizer", "amsgrad"))
    return _outcome(found, lambda a, b: [_compare(a, b, ["optimizer"], ("adam", "amsgrad"), 1 / MUCH_LESS)],
                    "needs AMSGrad and Adam, both with L2 at the same strength, otherwise equal")


def _changes(default: dict, changed: dict, free: Sequence[str], direction: str,
             names: tuple[str, str] = ("default", "changed")) -> list[Comparison]:
    """The claim's direction for `changed` against `default` ("lowers" or "raises"), and with
    "slightly" a bound: by at most SLIGHTLY of the default's dead filters."""
    slightly = direction.endswith("slightly")
    if direction.startswith("lowers"):
        return [_compare(default, changed, free, names, what=f": {direction}",
                         bound=1 - SLIGHTLY if slightly else None)]
    return [_compare(changed, default, free, names[::-1], what=f": {direction}",
                     bound=1 / (1 + SLIGHTLY) if slightly else None)]


def claim5_leaky_relu(ev: Evidence) -> Outcome:
    free = ["activation", "negative_slope"]
    found = pairs(ev.configs, free, _is("activation", "relu"), _is("activation", "leaky_relu"))
    return _outcome(found, lambda a, b: _changes(a, b, free, "lowers slightly", ("relu", "leaky")),
                    "needs leaky_relu and relu runs, otherwise equal")


_KNOBS = (  # claim 6: (setting, its default, the values the paper tried, what they do to sparsity)
    ("beta_init", 0.0, pl.col("beta_init") > 0.0, "raises"),
    ("gamma_lr_scale", 1.0, pl.col("gamma_lr_scale") < 1.0, "lowers"),
    ("beta_lr_scale", 1.0, pl.col("beta_lr_scale") < 1.0, "raises slightly"),
)


def claim6_bn_knobs(ev: Evidence) -> Outcome:
    outcomes = [_outcome(pairs(ev.configs, [knob], _is(knob, default), tried),
                         lambda a, b, knob=knob, direction=direction: _changes(a, b, [knob], direction), "")
                for knob, default, tried, direction in _KNOBS]
    comparisons = [c for o in outcomes for c in o.comparisons]
    note = "; ".join(f"{knob}: {o.note}" for (knob, *_), o in zip(_KNOBS, outcomes) if o.note)
    return Outcome(comparisons, note, "" if comparisons else
                   "needs runs that differ only in beta_init (> 0 vs 0), gamma_lr_scale or beta_lr_scale (< 1 vs 1)")


def claim7_batch_size(ev: Evidence) -> Outcome:
    # the paper's batch sizes train for equal iterations: epochs given for a reference batch size
    found = _neighbours(ev.configs, "batch_size", pl.col("reference_batch_size").is_not_null())
    return _outcome(found, lambda a, b: [_compare(a, b, ["batch_size"], ("smaller", "larger"))],
                    "needs two batch sizes at equal iterations (reference_batch_size set), otherwise equal")


def claim8_pruning(ev: Evidence) -> Outcome:
    """Per configuration, over its seeds whose dead filters were removed: the change in test error."""
    comparisons, measured = [], 0
    for row in ev.configs.to_dicts():
        per_seed = zip(row.get("test_err") or [], row.get("pruned_test_err") or [],
                       row.get("conv_params_pruned_pct") or [])
        seeds = [(err, pruned, pct) for err, pruned, pct in per_seed if err is not None and pruned is not None]
        measured += bool(seeds)
        removed = [(err, pruned, pct) for err, pruned, pct in seeds if pct]
        if not removed:
            continue
        changes = Sample.of([pruned - err for err, pruned, _ in removed])
        change = mean_of(changes)
        share = Sample.of([pct for *_, pct in removed]).mean
        comparisons.append(Comparison(
            f"{row['config']}: {share:.1f}% of conv params removed",
            _side("pruned", Sample.of([p for _, p, _ in removed]), 2, "pruned "),
            _side("unpruned", Sample.of([e for e, *_ in removed]), 2, "unpruned "),
            change, f"|pruned - unpruned| < {UNCHANGED:g}", change, within(change, UNCHANGED), decimals=2,
            why=_too_few(changes)))
    if not measured:
        return Outcome(untestable="no pruning measured (pruned_test_err is null)")
    note = f"{len(comparisons)} of {measured} configurations had dead filters removed"
    return Outcome(comparisons, note, "" if comparisons else "no configuration had a dead filter to remove")


# --- claim 9: the low-gradient simulation ----------------------------------------------------------

SETTLED = 0.05  # |scalar| below this, from its start value 1, counts as "driven to ~0"
LOW_STRENGTH = 1e-3  # below it the strength is "low": SGD shrinks the scalar by only lambda a step
SGD_KEEPS = 0.5  # "far faster": when the optimizer has the scalar at ~0, SGD still keeps over half of it
_FAST = ("adam", "rmsprop", "adamax")  # normalise by a recent gradient scale: the claim's optimizers
_DAMPENED = ("amsgrad", "adam")  # the supplement expects AMSGrad (long-term max) slower than Adam


def lowgrad_decay(lowgrad: pl.DataFrame, threshold: float = SETTLED) -> pl.DataFrame:
    """Per optimizer, strength and noise seed, `iters_to_zero`: the first recorded iteration at which
    |value| is below `threshold` (null if it never gets there), and `iterations`, the run's length.

    The first time, not the time from which it stays there: at ~0 the noise keeps the scalar
    moving (Adam at L2 1e-5: about +-0.02), so it crosses the threshold again now and then, and the
    last crossing would measure the run's length, not the regularizer."""
    return lowgrad.group_by("optimizer", "strength", "seed").agg(
        pl.col("iteration").filter(pl.col("value").abs() < threshold).min().alias("iters_to_zero"),
        pl.col("iteration").max().alias("iterations"),
    )


def _over_seeds(values: Sequence[float | None]) -> Interval:
    """The mean over the noise seeds with its t interval; no interval when a seed has no value."""
    sample = Sample.of(values)
    if not sample.n:
        return Interval(math.nan, None, None, "none")
    return Interval(sample.mean, None, None, "none") if sample.n < len(values) else mean_of(sample)


def _settles(optimizer: str, times: Sequence[int | None], horizon: int) -> Side:
    """An optimizer's side of claim 9: the iteration at which it first has the scalar at ~0, over
    the noise seeds (only where every seed gets there within the run)."""
    reached = Sample.of(times)
    if reached.n < len(times):
        return Side(optimizer, None, None, len(times),
                    f"not ~0 within {horizon} iterations in {len(times) - reached.n} of {len(times)} seeds")
    return _side(optimizer, reached, 0, "~0 at iteration ")


def _plain(interval: Interval, decimals: int, bound: bool = False) -> str:
    """A positive quantity over the seeds, unsigned: `6.2 [6.1, 6.3]`; 'at least' with `bound`."""
    text = f"{'at least ' if bound else ''}{interval.effect:.{decimals}f}"
    if interval.method in ("t", "welch"):
        text += f" [{interval.low:.{decimals}f}, {interval.high:.{decimals}f}]"
    return text


def _or_end(iteration: int | None, horizon: int) -> int:
    """When a seed reached ~0; the run's end where it never did (a bound)."""
    return horizon if iteration is None else iteration


def _censored(left: Sequence[int | None], right: Sequence[int | None], horizon: int) -> str:
    both = sum(a is None and b is None for a, b in zip(left, right))
    return f"neither reaches ~0 within {horizon} iterations in {both} of {len(left)} seeds" if both else ""


def claim9_low_gradient(ev: Evidence) -> Outcome:
    """Per optimizer and strength, how much sooner than SGD the scalar reaches ~0 (counted: Adam,
    RMSProp and AdaMax at low strengths), and AMSGrad against Adam (counted: dampened). Each is
    measured on every noise seed (the optimizers see the same noise) and decided on the mean over
    the seeds with its t interval."""
    if ev.lowgrad is None:
        return Outcome(untestable="the low-gradient simulation was not run")
    horizon = int(ev.lowgrad["iteration"].max())
    times: dict[tuple[str, float], dict[int, int | None]] = defaultdict(dict)
    for r in lowgrad_decay(ev.lowgrad).iter_rows(named=True):
        times[(r["optimizer"], r["strength"])][r["seed"]] = r["iters_to_zero"]
    sgd_abs = {(s, seed, i): abs(v) for s, seed, i, v in ev.lowgrad.filter(pl.col("optimizer") == "sgd")
               .select("strength", "seed", "iteration", "value").iter_rows()}
    seeds = sorted({seed for per in times.values() for seed in per})
    order = {o: i for i, o in enumerate(ev.lowgrad["optimizer"].unique(maintain_order=True))}
    comparisons = []
    for (optimizer, strength), ours in sorted(times.items(), key=lambda kv: (order[kv[0][0]], -kv[0][1])):
        if optimizer == "sgd" or ("sgd", strength) not in times:
            continue
        ref = times[("sgd", strength)]
        mine, theirs = [ours.get(seed) for seed in seeds], [ref.get(seed) for seed in seeds]
        # per seed: what SGD keeps when the optimizer reaches ~0 (at the run's end where only SGD
        # got there: it keeps shrinking, so less), and the speed-up; nothing where neither did
        kept = [None if t is None and r is None else sgd_abs[(strength, seed, _or_end(t, horizon))]
                for seed, t, r in zip(seeds, mine, theirs)]
        speedup = [None if t is None and r is None else _or_end(r, horizon) / _or_end(t, horizon)
                   for t, r in zip(mine, theirs)]
        effect, tested = _over_seeds(speedup), _over_seeds(kept)
        comparisons.append(Comparison(
            f"{optimizer} vs sgd at L2 {strength:g}", _settles(optimizer, mine, horizon),
            _settles("sgd", theirs, horizon), effect, f"|sgd| > {SGD_KEEPS:g} when {optimizer} reaches ~0",
            tested, above(tested, SGD_KEEPS), counted=optimizer in _FAST and strength < LOW_STRENGTH,
            decimals=2, effect_text="never ~0" if math.isnan(effect.effect) else
            f"{_plain(effect, 1, None in theirs)} x sooner",
            tested_text="" if math.isnan(tested.effect) else f"|sgd| = {_plain(tested, 2)}",
            why=_censored(mine, theirs, horizon) or _too_few(Sample.of(kept))))
    slow, fast = _DAMPENED
    for strength in sorted({s for _, s in times}, reverse=True):
        if (slow, strength) not in times or (fast, strength) not in times:
            continue
        t_slow, t_fast = [times[(slow, strength)].get(seed) for seed in seeds], \
            [times[(fast, strength)].get(seed) for seed in seeds]
        # per seed, how much later AMSGrad gets there; a seed that never does counts the run's end
        # (a bound: later at least, or earlier at least), nothing where neither did
        later = [None if a is None and b is None else float(_or_end(a, horizon) - _or_end(b, horizon))
                 for a, b in zip(t_slow, t_fast)]
        interval = _over_seeds(later)
        comparisons.append(Comparison(
            f"{slow} vs {fast} at L2 {strength:g}: dampened", _settles(slow, t_slow, horizon),
            _settles(fast, t_fast, horizon), interval, f"{slow} reaches ~0 later than {fast}", interval,
            above(interval), decimals=0, effect_text="" if math.isnan(interval.effect) else
            f"{'at least ' if None in t_slow else ''}{interval.text(0)} iterations later",
            why=_censored(t_slow, t_fast, horizon) or _too_few(Sample.of(later))))
    return Outcome(comparisons, f"{len(seeds)} noise seeds, every optimizer on the same ones; iterations resolve "
                   f"to the recording step; {horizon} iterations simulated")


# --- claim 10 --------------------------------------------------------------------------------------


MATCHED_ERR = 0.5  # points of % test error: an explicit point matches when its error is at most this much higher
COMPARABLE = 10.0  # points of % FLOPs removed: "comparable to slimming" = implicit at least slimming's minus this
# The explicit methods claim 10 compares with, and what it says of each
EXPLICIT = {"l1norm": "far more", "slimming": "at par or better"}
# What the methods themselves prescribe, so an implicit and an explicit configuration may differ in it:
# the training recipe (optimizer and its LR, regularizer and its strength: Adam with L2 for implicit
# sparsity, L1 on gamma for slimming, the usual L2 for L1-norm) and the pruning (every prune.* setting).
# Every other setting that changes what is trained (the network, data, training schedule, precision,
# remedy) must be the same; settings that change only how a trial runs or what it records
# (RUN_SETTINGS) may differ.
METHOD_SETTINGS = ("optimizer", "lr", "reg", "strength",
                   *(alias for alias, path in alias_paths().items() if path.startswith("prune.")))
RUN_SETTINGS = ("act_every", "snapshot_every", "eval_batch_size", "compile", "cuda_graph", "device")


def _err(row: dict) -> float | None:
    return _sample(row, "pruned_test_err").mean


def claim10_explicit_pruning(ev: Evidence) -> Outcome:
    """Per implicit configuration with dead filters removed: its FLOPs removed against every explicit
    configuration trained on the same network, data and schedule (METHOD_SETTINGS aside) whose mean
    pruned test error is at most MATCHED_ERR above its own, over the seeds: one whose error is clearly
    more above is left out; one that may be either way is compared but left undecided. Which explicit
    points are compared is decided by their error alone, never by the FLOPs they remove (the quantity
    tested)."""
    configs = ev.pruning
    if configs is None or configs.is_empty() or "method" not in configs.columns:
        return Outcome(untestable="no pruning measured")
    def measured(row: dict) -> bool:
        return bool(_sample(row, "flops_pruned_pct").n and _sample(row, "pruned_test_err").n)

    implicit = [r for r in configs.filter(_is("method", "none")).to_dicts()
                if measured(r) and _sample(r, "flops_pruned_pct").mean > 0]
    explicit: dict[str, list[dict]] = defaultdict(list)  # implicit config -> explicit ones of its schedule
    for a, b in pairs(configs, (*METHOD_SETTINGS, *RUN_SETTINGS), _is("method", "none"),
                      pl.col("method").is_in(list(EXPLICIT))):
        if measured(b):
            explicit[a["config"]].append(b)
    comparisons, unmatched = [], []
    for a in implicit:
        for method, word in EXPLICIT.items():
            same = [b for b in explicit[a["config"]] if b["method"] == method]
            # the explicit error at most MATCHED_ERR above the implicit one, over the seeds: a point
            # clearly above is left out, one that may be either way is compared but not decided
            match = {b["config"]: above(difference(_sample(a, "pruned_test_err"), _sample(b, "pruned_test_err")),
                                        -MATCHED_ERR) for b in same}
            matched = [b for b in same if match[b["config"]] != "fails"]
            if same and not matched:
                unmatched.append(f"{method} at {a['config']}")
            for b in matched:
                left, right = _sample(a, "flops_pruned_pct"), _sample(b, "flops_pruned_pct")
                if method == "l1norm":  # far more: a factor
                    tested, threshold = difference(left, right, FAR_MORE), 0.0
                    test = f"implicit - {FAR_MORE:g} x l1norm > 0"
                else:  # at par or better: a margin
                    tested, threshold = difference(left, right), -COMPARABLE
                    test = f"implicit - slimming > -{COMPARABLE:g}"
                uncertain = match[b["config"]] == "inconclusive"
                comparisons.append(Comparison(
                    f"{a['config']} (err {_err(a):.2f}%) vs {method} {b['config']} (err {_err(b):.2f}%): {word}",
                    _side(a["config"], left), _side(b["config"], right), difference(left, right), test, tested,
                    "inconclusive" if uncertain else above(tested, threshold),
                    why=_too_few(left, right) or ("test errors not shown within the match" if uncertain else "")))
    note = (f"{len(implicit)} implicit configuration(s) with dead filters removed; {len(comparisons)} comparison(s) "
            f"with explicit configurations of the same network, data and schedule within {MATCHED_ERR:g} points of "
            "its error"
            + (f"; none within it: {'; '.join(unmatched)}" if unmatched else ""))
    if comparisons:
        return Outcome(comparisons, note)
    if not implicit:
        needs = "trials with prune.method none that removed dead filters"
    elif unmatched:
        needs = f"explicit configurations within {MATCHED_ERR:g} points of the implicit test error (lower fractions)"
    else:
        needs = ("slimming or l1norm trials (prune.method, prune.fraction) on the same network, data and training "
                 f"schedule (every setting but {', '.join((*METHOD_SETTINGS, *RUN_SETTINGS))})")
    return Outcome(note=note, untestable=f"needs {needs}")


CLAIMS: tuple[Claim, ...] = (
    Claim(1, "Adam with L2 gives far more dead filters than SGD with L2, at comparable test error.",
          "supp. Table 1 (CIFAR-10): L2 1e-3, Adam 83% vs SGD 27% (3.1x), test error 13.1% vs 21.8%; SGD's dead "
          "filters sit in the early layers, Adam's also in C6-C7 (97%, 98%).",
          f"Adam vs SGD, both L2 at the same strength (any), all else equal; far more: Adam > {FAR_MORE:g} x SGD. "
          "The test errors and where the dead filters sit (per layer) are in table.md and layers.html, not "
          "given a verdict.",
          claim1_adam_vs_sgd),
    Claim(2, "For Adam, L2 gives more dead filters than decoupled weight decay of similar strength.",
          "supp. Table 1 (CIFAR-10): Adam L2 1e-4 70% vs WD 1e-4 40% and WD 2e-4 60%.",
          f"Adam with L2 vs Adam with WD within {SIMILAR_STRENGTH:g}x of its strength, all else equal; more: L2 > WD.",
          claim2_adam_l2_vs_wd),
    Claim(3, "Stronger regularization gives more dead filters (every optimizer).",
          "supp. Table 4 (CIFAR-10/100): L2 1e-6 -> 1e-4 -> 1e-2 raises sparsity for AMSGrad, AdaMax and RMSProp "
          "(AMSGrad CIFAR-10: 0 -> 47 -> 93%); supp. Table 1: SGD L2 5e-4 -> 1e-3, 9 -> 27%.",
          "Neighbouring strengths of one regularizer (L2 or WD), all else equal; more: stronger > weaker. "
          "'1e-6 gives almost none' is not tested (the paper's own RMSProp keeps 29% at 1e-6 on CIFAR-10).",
          claim3_strength),
    Claim(4, "AMSGrad gives much fewer dead filters than Adam with the same L2.",
          "supp. Table 2 (CIFAR-100): L2 1e-4, AMSGrad 13% vs Adam 47% (0.28x); on CIFAR-10 (supp. Tables 1, 4) "
          "the gap is smaller: 47% vs 70%.",
          f"AMSGrad vs Adam, both L2 at the same strength (any), all else equal; much fewer: AMSGrad < "
          f"{MUCH_LESS:g} x Adam.",
          claim4_amsgrad_vs_adam),
    Claim(5, "Leaky ReLU only slightly lowers the number of dead filters.",
          "supp. Table 2 (CIFAR-100, Adam): L2 1e-4, 47% -> 41% (slope 0.01) and 43% (slope 0.1); L2 1e-3, 76% -> 70%.",
          f"Leaky ReLU (any slope) vs ReLU, all else equal; only slightly lowers: ReLU > leaky (the direction) "
          f"and leaky > {1 - SLIGHTLY:g} x ReLU (a drop of at most {SLIGHTLY:.0%}; the paper's are 8-13%), both "
          "decided on their own interval.",
          claim5_leaky_relu),
    Claim(6, "BN beta init 1.0 raises sparsity; LR scale 0.1 on gamma lowers it; LR scale 0.1 on beta raises it "
             "slightly.",
          "supp. Table 3 (CIFAR-100, Adam, L2 1e-4): baseline 46%; beta init 1.0 53%; gamma LR x0.1 33%; "
          "beta LR x0.1 51% (beta init -0.1: 46%, not claimed).",
          f"Each setting against its default (beta_init > 0 vs 0; gamma_lr_scale, beta_lr_scale < 1 vs 1), "
          f"all else equal; raises / lowers: the direction; slightly: at most {SLIGHTLY:.0%} above the default "
          f"(the paper: +11%).",
          claim6_bn_knobs),
    Claim(7, "Larger mini-batches give fewer dead filters.",
          "main text (batch-size study at equal iterations); no table in the supplement.",
          "Neighbouring batch sizes at equal iterations (reference_batch_size set), all else equal; fewer: "
          "smaller batch > larger batch.",
          claim7_batch_size),
    Claim(8, "Removing the dead filters leaves the test error unchanged.",
          "supp. Table 1 (CIFAR-10, Adam, L2 1e-3): 13.1% -> 13.5% with 97% of conv parameters removed; "
          "supp. Table 2: within 0.3 points.",
          f"Per configuration with dead filters removed, the per-seed change pruned - unpruned (paired, same "
          f"network); unchanged: its interval inside +-{UNCHANGED:g} points (an equivalence margin).",
          claim8_pruning),
    Claim(9, "In the low-gradient regime an L2-regularized scalar is driven to ~0 far faster by Adam, RMSProp "
             "and AdaMax than by SGD, even at low strengths; AMSGrad dampens this.",
          "supp. Fig. 3 and its text: 'Adaptive gradient approaches exhibit strong regularization in low gradient "
          "regime even with low regularization values', against SGD (0.1, momentum 0.9); the supplement expects "
          "AMSGrad (long-term max of squared gradients) to dampen the regularizer; nothing quantitative on Adagrad "
          "or Adadelta.",
          f"Iterations until |scalar| first falls below {SETTLED:g}, on each of several noise seeds (every optimizer "
          f"sees the same noise); each comparison is decided on the mean over the seeds and its t interval "
          "(scipy.stats.ttest_1samp). "
          f"Counted: Adam, RMSProp, AdaMax vs SGD at each strength below {LOW_STRENGTH:g} (far faster: when the "
          f"optimizer reaches ~0, SGD still keeps over {SGD_KEEPS:g} of the scalar), and AMSGrad vs Adam at each "
          f"strength (dampened: AMSGrad later). Shown, not counted: the strength {LOW_STRENGTH:g} and above (SGD's "
          "own shrink of lambda a step reaches ~0 there too), AMSGrad, Adagrad and Adadelta vs SGD. A seed in "
          "which one side never reaches ~0 counts the run's end as its time (a bound: 'at least'); one in which "
          "neither does leaves the comparison inconclusive.",
          claim9_low_gradient),
    Claim(10, "Removing the dead filters, without fine-tuning, prunes far more than L1-norm filter pruning and "
              "about as much as network slimming.",
          "main text: 70-80% of VGG-16's filters on CIFAR-10/100, against up to 34% of VGG-16's FLOPs by L1-norm "
          "pruning with retraining (Li et al. 2017); comparable to network slimming for VGG-11 on ImageNet.",
          f"At matched test error, on the same network, data and training schedule (every setting the same but "
          f"those the methods prescribe, {', '.join(METHOD_SETTINGS)}, and those that change only how a trial runs "
          f"or what it records, {', '.join(RUN_SETTINGS)}): each configuration of prune.method none "
          f"with dead filters removed against every explicit configuration (any fraction, fine-tuned or not) "
          f"whose pruned test error is at most {MATCHED_ERR:g} points above the implicit one's (explicit - implicit "
          f"error < {MATCHED_ERR:g} over the seeds, Welch: a point clearly above is left out, one whose interval "
          f"straddles it is counted as inconclusive), each a counted comparison: which explicit points are compared "
          f"is decided by their error alone, never "
          f"by the FLOPs they remove. The per-seed % of FLOPs removed compared. Far more than L1-norm: implicit > "
          f"{FAR_MORE:g} x L1-norm (the paper: 70-80% of filters against 34% of FLOPs); about as much as slimming: "
          f"implicit > slimming - {COMPARABLE:g} points (the paper: at par or better). An implicit configuration "
          "no explicit one matches is named in the note, not counted.",
          claim10_explicit_pruning),
)


# --- verdicts ----------------------------------------------------------------------------------------


def _verdict(counted: list[Comparison]) -> Verdict:
    statuses = {c.status for c in counted}
    if not counted:
        return "not testable"
    if statuses == {"holds"}:
        return "holds"
    if "fails" in statuses:
        return "mixed" if "holds" in statuses else "fails"
    return "inconclusive"


def _summary(verdict: Verdict, counted: list[Comparison], outcome: Outcome) -> str:
    if verdict == "not testable":
        return outcome.untestable
    held = sum(c.status == "holds" for c in counted)
    parts = [f"{held} of {len(counted)} counted comparisons hold"]
    for status in ("fails", "inconclusive"):
        reasons: dict[str, list[str]] = defaultdict(list)
        for c in counted:
            if c.status == status:
                reasons[c.why].append(c.name)
        parts += [f"{status}{f' ({why})' if why else ''}: " + "; ".join(names) for why, names in reasons.items()]
    return ". ".join(parts)


_COMPARISON_SCHEMA = {
    "comparison": pl.String, "left": pl.String, "left_mean": pl.Float64, "left_std": pl.Float64, "left_n": pl.Int64,
    "right": pl.String, "right_mean": pl.Float64, "right_std": pl.Float64, "right_n": pl.Int64,
    "effect": pl.Float64, "interval_low": pl.Float64, "interval_high": pl.Float64, "interval": pl.String,
    "test": pl.String, "tested": pl.Float64, "tested_low": pl.Float64, "tested_high": pl.Float64,
    "bound": pl.String, "bounded": pl.Float64, "bounded_low": pl.Float64, "bounded_high": pl.Float64,
    "status": pl.String, "why": pl.String, "counted": pl.Boolean,
    "left_text": pl.String, "right_text": pl.String, "effect_text": pl.String, "tested_text": pl.String,
}
_SHOWN = ("left_text", "right_text", "effect_text", "tested_text")  # for claims.md, not claims.csv


def _record(c: Comparison) -> dict[str, Any]:
    bounded = c.bounded
    return {
        "comparison": c.name, "left": c.left.label, "left_mean": c.left.mean, "left_std": c.left.std,
        "left_n": c.left.n, "right": c.right.label, "right_mean": c.right.mean, "right_std": c.right.std,
        "right_n": c.right.n, "effect": c.effect.effect, "interval_low": c.effect.low,
        "interval_high": c.effect.high, "interval": c.effect.method, "test": c.test,
        "tested": c.tested.effect, "tested_low": c.tested.low, "tested_high": c.tested.high,
        "bound": c.bound or None, "bounded": bounded and bounded.effect, "bounded_low": bounded and bounded.low,
        "bounded_high": bounded and bounded.high, "status": c.status, "why": c.why or None, "counted": c.counted,
        "left_text": c.left.text, "right_text": c.right.text,
        "effect_text": c.effect_text or c.effect.text(c.decimals),
        "tested_text": (c.tested_text or c.tested.text(c.decimals))
        + ("" if c.bounded is None else f"; {c.bounded.text(c.decimals)}"),
    }


def check_claims(trials: pl.DataFrame, lowgrad: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per claim: `claim`, `text`, `source`, `test`, `status` (a Verdict), `evidence` (the
    counted comparisons in a line), `note`, and `comparisons` (a list of records, see `claims_table`).

    `trials`: per-seed rows as `results.per_trial` gives them; `lowgrad`: the low-gradient
    simulation (`figures.lowgrad_frame`), or None (claim 9 is then not testable)."""
    evidence = Evidence(configurations(implicit_trials(trials)), lowgrad, configurations(trials))
    rows = []
    for claim in CLAIMS:
        outcome = claim.check(evidence)
        counted = [c for c in outcome.comparisons if c.counted]
        verdict = _verdict(counted)
        rows.append({"claim": claim.number, "text": claim.text, "source": claim.source, "test": claim.test,
                     "status": verdict, "evidence": _summary(verdict, counted, outcome), "note": outcome.note,
                     "comparisons": [_record(c) for c in outcome.comparisons]})
    return pl.DataFrame(rows, schema={
        "claim": pl.Int64, "text": pl.String, "source": pl.String, "test": pl.String, "status": pl.String,
        "evidence": pl.String, "note": pl.String, "comparisons": pl.List(pl.Struct(_COMPARISON_SCHEMA))})


def claims_table(verdicts: pl.DataFrame) -> pl.DataFrame:
    """claims.csv: one row per claim (`comparison` null, `status` its verdict, `text` the claim), then
    one per comparison (`left`/`right` and their mean, std, n over seeds; `effect` left minus right
    with its interval and how it was made; `tested` and its interval, on which `status` is decided
    against `test`, and `bounded` against `bound` where the claim says "slightly"; `why` an inconclusive
    status's reason where it is not the interval; `counted` toward the verdict). `interval` names how an
    interval was made (`stats.INTERVAL_METHODS`)."""
    claims = verdicts.select("claim", pl.lit(None, pl.String).alias("comparison"), "text", "status",
                             pl.lit(None, pl.Boolean).alias("counted"))
    comparisons = verdicts.select("claim", "comparisons").explode("comparisons").drop_nulls("comparisons") \
        .unnest("comparisons").with_columns(pl.lit(None, pl.String).alias("text"))
    table = pl.concat([claims, comparisons], how="diagonal_relaxed")
    order = ["claim", "comparison", "text", *(c for c in _COMPARISON_SCHEMA if c != "comparison" and c not in _SHOWN)]
    return table.with_row_index("_row").sort("claim", "_row").select(order)
