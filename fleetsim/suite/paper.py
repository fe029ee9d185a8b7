"""`fleetsim paper`: the reproduction suite. Every experiment of a suite file (a scenario,
the policies to compare on it, the claims it checks with the rivals each claim is compared
with, named before any run) runs under every seed; each run is a normal run directory,
OUT/<experiment>/<policy>/seed<k>/, and a run that finished is not run again, so a killed
suite continues where it stopped. An experiment with `upper_bound` also runs FedAvg on
the same fleet with every device unconstrained (OUT/<experiment>/upper_bound/seed<k>/):
its gain over the start is the experiment's headroom. The document (tables, claims with
their verdicts, figures) is then computed from those directories alone (`claims.py`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from fleetsim import PROJECT_ROOT
from fleetsim.config.scenario import Scenario, SelectionConfig, load_scenario
from fleetsim.config.strict import Strict, parse_model, read_yaml
from fleetsim.errors import ConfigError
from fleetsim.runtime.batch import BatchRun, Outcome, default_jobs, run_batch, single_host
from fleetsim.suite.archive import DURATIONS, SITTINGS, pack_records, pack_run, read_record, unpack
from fleetsim.suite.tuning import (
    Grid,
    Setting,
    TuningConfig,
    apply,
    collect,
    grid_of,
    label,
    trial_runs,
    write_tuning,
)
from fleetsim.views.compare import with_policy
from fleetsim.views.metrics import write_atomic

DEFAULT_SUITE = PROJECT_ROOT / "paper" / "suite.yaml"
Claim = Literal["lora_memory", "caff_accuracy", "upload_parity", "slt_ahead"]
# The method each claim is about; its rivals are the methods it is compared with.
SUBJECT: Mapping[str, str] = {"lora_memory": "caff", "caff_accuracy": "caff",
                              "upload_parity": "caff", "slt_ahead": "slt"}
# Claims about an accuracy gap: testable only with enough headroom (an upper bound run).
ACCURACY_CLAIMS = frozenset({"caff_accuracy", "upload_parity", "slt_ahead"})
UPPER_BOUND = "upper_bound"  # the upper bound run's directory under its experiment
# An unconstrained device: budgets far above any zoo model's full finetuning.
FREE_MEMORY_MB = 65536.0
FREE_FLOPS_PER_S = 1e15
FREE_LINK_BPS = 1e11
FREE_DEADLINE_S = 1e9


class ClaimSpec(Strict):
    """A claim an experiment checks and the methods it is compared with (its rivals, all
    among the experiment's policies). `share`: the fraction of the headroom that decides
    the verdict (the gain that agrees, the parity band); default per claim (claims.py).
    `min_headroom_points` overrides the suite's threshold for this claim."""

    claim: Claim
    rivals: list[str] = Field(min_length=1)
    share: float | None = Field(default=None, gt=0, le=1)
    min_headroom_points: float | None = Field(default=None, gt=0)


class GapSpec(Strict):
    """An experiment's small-model reference for gap shares: `small` names the policy
    (one of the experiment's) whose runs are the small model; `about` says in the document
    what that model is. Per seed, a method's share of the gap is (method - small) /
    (upper bound - small) in final accuracy (findings.py), so it needs the upper bound run."""

    small: str
    about: str = ""


class Experiment(Strict):
    name: str = Field(pattern=r"^[a-z0-9_]+$")
    title: str
    scenario: str  # path relative to the project root
    policies: list[str] = Field(min_length=1)
    set: dict[str, str] = {}  # overrides for this experiment's runs (`--set` syntax)
    params: dict[str, dict[str, Any]] = {}  # policy name -> its params in this experiment
    claims: list[ClaimSpec] = []  # what the paper says that this experiment can check
    fairness: bool = False  # add the per-class fairness table
    start: Literal["pretrained", "scratch"] = "pretrained"  # the model the runs start from
    upper_bound: bool = False  # also run FedAvg with every device unconstrained
    gap: GapSpec | None = None  # the document's gap shares against a small model
    tuning: TuningConfig = TuningConfig()  # grids that replace the suite's, per policy


class Reduced(Strict):
    """The CI-sized version: fewer seeds and overrides that shrink every run."""

    seeds: list[int] = Field(min_length=1)
    set: dict[str, str] = {}
    tuning: TuningConfig | None = None  # given: replaces every grid of the suite


class Suite(Strict):
    seeds: list[int] = Field(min_length=1)
    set: dict[str, str] = {}  # overrides for every run
    # an accuracy claim is testable only where the headroom's lower bound reaches this
    min_headroom_points: float = Field(default=3.0, gt=0)
    reduced: Reduced
    experiments: list[Experiment] = Field(min_length=1)
    tuning: TuningConfig = TuningConfig()  # per policy, the grid tuned on the first seed


@dataclass(frozen=True)
class PlannedRun:
    experiment: Experiment
    policy: str  # the policy that runs (fedavg for the upper bound)
    seed: int
    scenario: Scenario
    out_dir: Path
    upper_bound: bool = False  # the experiment's upper bound run

    @property
    def label(self) -> str:
        """The run's name within its experiment: its policy, or upper_bound."""
        return UPPER_BOUND if self.upper_bound else self.policy


def load_suite(path: Path, reduced: bool = False) -> Suite:
    """The suite as it will run: with `reduced`, the reduced seeds replace the full ones
    (`planned_runs` applies the reduced overrides last, after each experiment's)."""
    suite = parse_model(Suite, read_yaml(path), path)
    names = [e.name for e in suite.experiments]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(path, f"experiments[{i}].name", f"{name!r} appears twice")
        check_claims(suite.experiments[i], path, f"experiments[{i}]")
        check_gap(suite.experiments[i], path, f"experiments[{i}]")
    if reduced:
        suite = suite.model_copy(update={"seeds": suite.reduced.seeds})
    return suite


def check_claims(exp: Experiment, path: Path, key: str) -> None:
    """Each claim's method and rivals are among the experiment's policies (LoRA's memory
    is compared with LoRA only, and has fixed bounds, not a share of the headroom); an
    accuracy claim needs the upper bound run. Raises ConfigError naming the key path."""
    for j, spec in enumerate(exp.claims):
        at, subject = f"{key}.claims[{j}]", SUBJECT[spec.claim]
        if subject not in exp.policies:
            raise ConfigError(path, f"{at}.claim", f"{spec.claim} is about {subject}, "
                              f"which is not among the policies {', '.join(exp.policies)}")
        for rival in spec.rivals:
            if rival not in exp.policies or rival == subject:
                raise ConfigError(path, f"{at}.rivals", f"{rival!r} is not a rival of "
                                  f"{subject} among the policies {', '.join(exp.policies)}")
        if spec.claim == "lora_memory" and (spec.rivals != ["lora"] or spec.share
                                            or spec.min_headroom_points):
            raise ConfigError(path, at, "lora_memory takes rivals [lora] and no share or "
                              "min_headroom_points (its bounds are 2x-3x)")
        if spec.claim in ACCURACY_CLAIMS and not exp.upper_bound:
            raise ConfigError(path, f"{key}.upper_bound", f"{spec.claim} compares accuracy: "
                              "it needs the headroom, set upper_bound: true")


def check_gap(exp: Experiment, path: Path, key: str) -> None:
    """The gap's small model is one of the experiment's policies and the experiment has
    the upper bound run. Raises ConfigError naming the key path."""
    if exp.gap is None:
        return
    if exp.gap.small not in exp.policies:
        raise ConfigError(path, f"{key}.gap.small", f"{exp.gap.small!r} is not among the "
                          f"policies {', '.join(exp.policies)}")
    if not exp.upper_bound:
        raise ConfigError(path, f"{key}.upper_bound", "gap shares are shares of the gap "
                          "between the small model and the upper bound: set upper_bound: true")


def unconstrained(scenario: Scenario) -> Scenario:
    """The same scenario with every device unconstrained: memory, FLOP rate and both links
    far above any need (`memory_of` dropped, throttling, bandwidth walks and budget events
    removed) and a deadline that never binds. Availability (churn), selection, data,
    model, training and faults are kept. Pure: returns a new scenario."""
    free = {"memory_mb": FREE_MEMORY_MB, "flops_per_s": FREE_FLOPS_PER_S,
            "uplink_bps": FREE_LINK_BPS, "downlink_bps": FREE_LINK_BPS}
    fleet = [entry.model_copy(update={"memory_of": None, "overrides": {**entry.overrides,
                                                                       **free},
                                      "throttle": None, "bandwidth_walk": None})
             for entry in scenario.fleet]
    selection = SelectionConfig.model_validate({**scenario.selection.model_dump(),
                                                "deadline_s": FREE_DEADLINE_S})
    return scenario.model_copy(update={"fleet": fleet, "events": [], "selection": selection})


def only(suite: Suite, path: Path, names: Sequence[str]) -> Suite:
    """The suite cut to the named experiments (all of them when `names` is empty)."""
    known = [e.name for e in suite.experiments]
    for name in names:
        if name not in known:
            raise ConfigError(path, "experiments", f"no experiment {name!r}; the suite has "
                              f"{', '.join(known)}")
    kept = [e for e in suite.experiments if not names or e.name in names]
    return suite.model_copy(update={"experiments": kept})


def planned_runs(suite: Suite, path: Path, out_dir: Path, reduced: bool = False
                 ) -> Iterator[PlannedRun]:
    """Every run of the suite, in order (per experiment and seed: its policies, then its
    upper bound if it has one); scenarios are loaded (and so checked) here."""
    from policies import registered

    known = registered()
    for i, exp in enumerate(suite.experiments):
        for policy in exp.policies:
            if policy not in known:
                raise ConfigError(path, f"experiments[{i}].policies", f"unknown policy "
                                  f"{policy!r}; registered: {', '.join(known)}")
        overrides = {**suite.set, **exp.set, **(suite.reduced.set if reduced else {})}
        source = PROJECT_ROOT / exp.scenario
        if not source.is_file():
            raise ConfigError(path, f"experiments[{i}].scenario", f"no file {source}")
        for seed in suite.seeds:
            base = load_scenario(source, {**overrides, "seed": str(seed)})
            for policy in exp.policies:
                yield PlannedRun(exp, policy, seed,
                                 with_policy(base, policy, exp.params.get(policy)),
                                 out_dir / exp.name / policy / f"seed{seed}")
            if exp.upper_bound:
                bound = unconstrained(with_policy(base, "fedavg", exp.params.get("fedavg")))
                yield PlannedRun(exp, "fedavg", seed, bound.model_copy(
                    update={"name": f"{base.name}-{UPPER_BOUND}"}),
                    out_dir / exp.name / UPPER_BOUND / f"seed{seed}", upper_bound=True)


@dataclass(frozen=True)
class SuiteJob:
    """One run of the suite (a test run or a tuning trial) and its progress line."""

    run: BatchRun
    label: str
    measure: str  # what the line reports: "final accuracy" or "validation accuracy"


# experiment -> run label -> (grid, its trials); see tuning_plan
TuningPlan = dict[str, dict[str, tuple[Grid, list[tuple[Setting, BatchRun]]]]]


def run_suite(path: Path, out_dir: Path, reduced: bool = False, log: Any = None,
              names: Sequence[str] = (), jobs: int | None = None,
              archive: Path | None = None) -> Suite:
    """Run every planned run (of the named experiments; default all) that has not
    finished yet, `jobs` at once (default: the CPUs), each on one host in a process of its
    own (fleetsim.runtime.batch); progress goes to `log`. First every tuning trial (`tuning_plan`);
    each experiment's choices go to OUT/<exp>/tuning.json and apply to all its seeds.
    With an `archive` (fleetsim.suite.archive), the runs it holds are written into `out_dir`
    first and every run finished here is added to it."""
    suite = only(load_suite(path, reduced), path, names)
    runs = list(planned_runs(suite, path, out_dir, reduced))  # every scenario checked first
    plan = tuning_plan(suite, path, runs, out_dir, reduced)  # and every trial's
    if archive is not None:
        print(f"{unpack(archive, out_dir)} finished runs restored from {archive}",
              file=log, flush=True)
    sitting = Sitting(out_dir, archive, jobs or default_jobs())
    trials = [(exp, name, setting, run) for exp, by_name in plan.items()
              for name, (_, pairs) in by_name.items() for setting, run in pairs]
    _run_jobs([SuiteJob(run, f"tuning [{n}/{len(trials)}] {exp} {name} {label(setting)}",
                        "validation accuracy")
               for n, (exp, name, setting, run) in enumerate(trials, 1)], sitting, log)
    choices = record_choices(plan, out_dir, log)
    _run_jobs([SuiteJob(_frozen(run, choices), f"[{n}/{len(runs)}] {run.experiment.name} "
                        f"{run.label} seed {run.seed}", "final accuracy")
               for n, run in enumerate(runs, 1)], sitting, log)
    return suite


@dataclass
class Sitting:
    """One invocation of the suite: it saves each run's duration as the run finishes
    (durations.json) and its own wall time so far (sittings.json, by start time), and
    adds each finished run to the archive, if any, so a kill loses only runs under way."""

    out_dir: Path
    archive: Path | None
    jobs: int
    began: float = field(default_factory=time.perf_counter)
    started: str = field(default_factory=lambda: datetime.now(UTC)
                         .isoformat(timespec="seconds"))
    runs: int = 0

    def finished(self, run_dir: Path, seconds: float) -> None:
        self.runs += 1
        durations = {**read_record(self.out_dir / DURATIONS),
                     str(run_dir.relative_to(self.out_dir)): seconds}  # start-up included
        write_atomic(self.out_dir / DURATIONS, json.dumps(durations, indent=1, sort_keys=True))
        sittings = {**read_record(self.out_dir / SITTINGS), self.started: {
            "jobs": self.jobs, "runs": self.runs, "wall_s": time.perf_counter() - self.began}}
        write_atomic(self.out_dir / SITTINGS, json.dumps(sittings, indent=1, sort_keys=True))
        self.archived(run_dir, again=True)

    def archived(self, run_dir: Path, again: bool = False) -> None:
        """The finished run is in the archive, if any (packed `again` if it was)."""
        if self.archive is None:
            return
        if again or not (self.archive / run_dir.relative_to(self.out_dir) / "summary.json"
                         ).is_file():
            pack_run(run_dir, self.out_dir, self.archive)
        pack_records(self.out_dir, self.archive)


def _frozen(run: PlannedRun, choices: Mapping[tuple[str, str], Setting]) -> BatchRun:
    """The planned run with its experiment's tuned choice applied, on one host."""
    source = PROJECT_ROOT / run.experiment.scenario
    choice = choices.get((run.experiment.name, run.label), {})
    return BatchRun(single_host(apply(run.scenario, choice, source)), source, run.out_dir)


def tuning_plan(suite: Suite, path: Path, runs: Sequence[PlannedRun], out_dir: Path,
                reduced: bool = False) -> TuningPlan:
    """The trials: for each run of the first seed whose label (policy, or upper_bound)
    has a grid, each setting of the grid on that run's scenario, on the validation split,
    in OUT/<exp>/tuning/<label>/grid<i>/. ConfigError names the grid of a bad key."""
    check_grids(suite, path)
    plan: TuningPlan = {}
    for run in runs:
        found = grid_for(suite, run, reduced) if run.seed == suite.seeds[0] else None
        if found is None:
            continue
        where, grid = found[0], grid_of(found[1])
        exp_dir = out_dir / run.experiment.name
        try:
            trials = trial_runs(run.scenario, PROJECT_ROOT / run.experiment.scenario, grid,
                                exp_dir / "tuning" / run.label)
        except ConfigError as err:
            raise ConfigError(path, where, f"{err.key}: {err.message}") from None
        plan.setdefault(run.experiment.name, {})[run.label] = (grid, trials)
    return plan


def grid_for(suite: Suite, run: PlannedRun, reduced: bool = False
             ) -> tuple[str, dict[str, list[Any]]] | None:
    """The run's grid and where the suite file declares it. With `reduced` and
    reduced.tuning given, only its grids count; else the experiment's, then the suite's.
    At each level the run's label wins over its policy (the upper bound takes fedavg's
    grid unless `upper_bound` has one). None: the run is not tuned."""
    exp = run.experiment
    levels = ([("reduced.tuning", suite.reduced.tuning)] if reduced and suite.reduced.tuning
              else [(f"experiments[{exp.name}].tuning", exp.tuning), ("tuning", suite.tuning)])
    for prefix, config in levels:
        for name in (run.label, run.policy):
            if name in config.grids:
                return f"{prefix}.grids.{name}", config.grids[name]
    return None


def check_grids(suite: Suite, path: Path) -> None:
    """Every grid names a registered policy (or upper_bound) and has values to try."""
    from policies import registered

    known = [*registered(), UPPER_BOUND]
    levels = [("tuning", suite.tuning), ("reduced.tuning", suite.reduced.tuning),
              *((f"experiments[{e.name}].tuning", e.tuning) for e in suite.experiments)]
    for prefix, config in levels:
        for name, grid in (config.grids if config else {}).items():
            if name not in known:
                raise ConfigError(path, f"{prefix}.grids", f"unknown policy {name!r}; "
                                  f"registered: {', '.join(known)}")
            for key, values in grid.items():
                if not values:
                    raise ConfigError(path, f"{prefix}.grids.{name}.{key}", "no values")
            if not grid:
                raise ConfigError(path, f"{prefix}.grids.{name}", "no keys")


def record_choices(plan: TuningPlan, out_dir: Path, log: Any = None
                   ) -> dict[tuple[str, str], Setting]:
    """Each experiment's tuning.json, computed from its trials' run directories; returns
    (experiment, run label) -> the chosen setting."""
    choices = {}
    for exp_name, by_name in plan.items():
        exp_dir = out_dir / exp_name
        results = {name: collect(grid, trials, exp_dir) for name, (grid, trials)
                   in by_name.items()}
        write_tuning(exp_dir, results)
        for name, tuned in results.items():
            choices[(exp_name, name)] = tuned["choice"]
            print(f"{exp_name} {name}: chose {label(tuned['choice'])} (validation accuracy "
                  f"{_fmt(tuned['choice_validation_accuracy'])})", file=log, flush=True)
    return choices


def _run_jobs(batch: Sequence[SuiteJob], sitting: Sitting, log: Any) -> None:
    """Run the jobs that did not finish before (`finished_before`), `sitting.jobs` at
    once; `sitting` records each as it finishes."""
    durations = read_record(sitting.out_dir / DURATIONS)
    todo = {}
    for job in batch:
        if finished_before(job.run, durations, sitting.out_dir):
            print(f"{job.label}: done before", file=log, flush=True)
            sitting.archived(job.run.out_dir)
        else:
            todo[job.run.out_dir] = job

    def done(run: BatchRun, outcome: Outcome) -> None:
        sitting.finished(run.out_dir, outcome.seconds)
        print(f"{todo[run.out_dir].label}: {todo[run.out_dir].measure} "
              f"{_fmt(outcome.final_accuracy)} ({outcome.seconds:.0f} s)", file=log, flush=True)

    run_batch([job.run for job in todo.values()], sitting.jobs, done)


def finished_before(run: BatchRun, durations: Mapping[str, float], out_dir: Path) -> bool:
    """The run directory holds this very run, finished and timed: a summary, a duration,
    and the scenario it would run now (a scenario or suite edited since runs again)."""
    written = run.out_dir / "scenario.yaml"
    return ((run.out_dir / "summary.json").is_file()
            and str(run.out_dir.relative_to(out_dir)) in durations and written.is_file()
            and same_scenario(written, run.scenario))


def same_scenario(written: Path, scenario: Scenario) -> bool:
    """The written scenario, read with today's schema (keys added since take their
    defaults), is `scenario`; one that no longer reads is not."""
    try:
        return load_scenario(written) == scenario
    except ConfigError:
        return False


def _fmt(accuracy: float | None) -> str:
    return "-" if accuracy is None else f"{accuracy:.4f}"


def load_durations(out_dir: Path) -> dict[str, float]:
    """Seconds each finished run took, by its directory under `out_dir`."""
    return read_record(out_dir / DURATIONS)


def load_sittings(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Per sitting of the suite (by its start, UTC): jobs, runs finished, wall seconds."""
    return read_record(out_dir / SITTINGS)
