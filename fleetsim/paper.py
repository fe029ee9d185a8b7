"""`fleetsim paper`: the reproduction suite. Every experiment of a suite file (a scenario,
the policies to compare on it, the claims its table checks) runs under every seed; each
run is a normal run directory, OUT/<experiment>/<policy>/seed<k>/, and a run that
finished is not run again, so a killed suite continues where it stopped. The document
(tables, claims, figures) is then computed from those directories alone (`claims.py`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from fleetsim import PROJECT_ROOT
from fleetsim.compare import with_policy
from fleetsim.errors import ConfigError
from fleetsim.metrics import write_atomic
from fleetsim.scenario import Scenario, load_scenario
from fleetsim.strict import Strict, parse_model, read_yaml

DEFAULT_SUITE = PROJECT_ROOT / "paper" / "suite.yaml"
DURATIONS = "durations.json"  # seconds per finished run, beside the run directories
Claim = Literal["lora_memory", "caff_accuracy", "upload_parity", "slt_ahead"]


class Experiment(Strict):
    name: str = Field(pattern=r"^[a-z0-9_]+$")
    title: str
    scenario: str  # path relative to the project root
    policies: list[str] = Field(min_length=1)
    set: dict[str, str] = {}  # overrides for this experiment's runs (`--set` syntax)
    params: dict[str, dict[str, Any]] = {}  # policy name -> its params in this experiment
    claims: list[Claim] = []  # what the paper says that this experiment can check
    fairness: bool = False  # add the per-class fairness table


class Reduced(Strict):
    """The CI-sized version: fewer seeds and overrides that shrink every run."""

    seeds: list[int] = Field(min_length=1)
    set: dict[str, str] = {}


class Suite(Strict):
    seeds: list[int] = Field(min_length=1)
    set: dict[str, str] = {}  # overrides for every run
    reduced: Reduced
    experiments: list[Experiment] = Field(min_length=1)


@dataclass(frozen=True)
class PlannedRun:
    experiment: Experiment
    policy: str
    seed: int
    scenario: Scenario
    out_dir: Path


def load_suite(path: Path, reduced: bool = False) -> Suite:
    """The suite as it will run: with `reduced`, the reduced seeds replace the full ones
    (`planned_runs` applies the reduced overrides last, after each experiment's)."""
    suite = parse_model(Suite, read_yaml(path), path)
    names = [e.name for e in suite.experiments]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(path, f"experiments[{i}].name", f"{name!r} appears twice")
    if reduced:
        suite = suite.model_copy(update={"seeds": suite.reduced.seeds})
    return suite


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
    """Every run of the suite, in order; scenarios are loaded (and so checked) here."""
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


def run_suite(path: Path, out_dir: Path, reduced: bool = False, log: Any = None,
              names: Sequence[str] = ()) -> Suite:
    """Run every planned run (of the named experiments; default all) that has not
    finished yet; progress goes to `log`."""
    from fleetsim.engine import run_scenario
    from fleetsim.monitor import PlainObserver
    from fleetsim.session import RunSetup

    suite = only(load_suite(path, reduced), path, names)
    runs = list(planned_runs(suite, path, out_dir, reduced))  # every scenario checked first
    durations = load_durations(out_dir)
    for n, run in enumerate(runs, 1):
        label = f"[{n}/{len(runs)}] {run.experiment.name} {run.policy} seed {run.seed}"
        key = str(run.out_dir.relative_to(out_dir))
        if (run.out_dir / "summary.json").is_file() and key in durations:
            print(f"{label}: done before", file=log, flush=True)
            continue
        _clear(run.out_dir)  # a run killed midway starts again
        began = time.perf_counter()
        with (run.out_dir.parent / f"{run.out_dir.name}.log").open("w") as run_log:
            summary = asyncio.run(run_scenario(RunSetup(run.scenario, PROJECT_ROOT /
                                                        run.experiment.scenario),
                                               run.out_dir, PlainObserver(run.out_dir,
                                                                          run_log)))
        durations[key] = time.perf_counter() - began  # the whole run, start-up included
        write_atomic(out_dir / DURATIONS, json.dumps(durations, indent=1, sort_keys=True))
        print(f"{label}: final accuracy {summary['final_accuracy']:.4f} "
              f"({durations[key]:.0f} s)", file=log, flush=True)
    return suite


def load_durations(out_dir: Path) -> dict[str, float]:
    """Seconds each finished run took, by its directory under `out_dir`."""
    path = out_dir / DURATIONS
    return json.loads(path.read_text()) if path.is_file() else {}


def _clear(run_dir: Path) -> None:
    import shutil

    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
