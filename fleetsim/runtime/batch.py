"""Many runs at once: each run in a worker process of its own with one in-process host
(`single_host`), so N workers keep N cores busy. A run's result does not depend on which
worker runs it or what ran there before (the engine seeds every stream itself), so a batch
gives what running the runs one after another gives. Used by `fleetsim paper` and
`fleetsim tune`.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from fleetsim.config.scenario import Scenario


@dataclass(frozen=True)
class BatchRun:
    scenario: Scenario
    source: Path  # the scenario file, for error messages
    out_dir: Path  # the run directory (cleared first); its log is <out_dir>.log beside it


@dataclass(frozen=True)
class Outcome:
    final_accuracy: float | None
    seconds: float  # the whole run, start-up included


def default_jobs() -> int:
    """Runs at once by default: the CPUs this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count() or 1


def single_host(scenario: Scenario) -> Scenario:
    """The scenario on one in-process host with one torch thread (results do not depend
    on the hosts, so only the wall time changes)."""
    workers = scenario.workers.model_copy(update={"backend": "local", "count": 1,
                                                  "threads_per_host": 1})
    return scenario.model_copy(update={"workers": workers})


def run_batch(runs: Sequence[BatchRun], jobs: int,
              on_done: Callable[[BatchRun, Outcome], None]) -> None:
    """Run every run, `jobs` at once, calling `on_done` in this process as each finishes.
    The first failure cancels the runs not yet started and is raised once the started
    ones end (a ConfigError stays one)."""
    if not runs:
        return
    warm_caches(run.scenario for run in runs)
    context = multiprocessing.get_context("spawn")  # no forked torch or Ray state
    with ProcessPoolExecutor(max_workers=max(1, min(jobs, len(runs))),
                             mp_context=context) as pool:
        pending: dict[Future[Outcome], BatchRun] = {pool.submit(execute, run): run
                                                    for run in runs}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    on_done(pending.pop(future), future.result())
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def warm_caches(scenarios: Iterable[Scenario]) -> None:
    """Build the corpus cache and pretrain the models the scenarios name (their model and
    those in a policy's `models` param) here, once, before workers would each do it at
    the same time. A model a policy picks by itself may still be pretrained by two
    workers at once: that costs time only (pretrain keeps the first copy)."""
    from fleetsim.zoo.data import corpus_roles
    from fleetsim.zoo.model import ZOO
    from fleetsim.zoo.pretrain import is_cached, pretrain

    corpus_roles()
    names = set()
    for scenario in scenarios:
        models = scenario.policy.params.get("models")
        names |= {scenario.model.name, *(models if isinstance(models, list) else [])}
    for name in sorted(names & set(ZOO)):
        if not is_cached(name):
            pretrain(ZOO[name])


def execute(run: BatchRun) -> Outcome:
    """One run, in a worker process: the directory cleared, the run, its plain log."""
    from fleetsim.runtime.engine import run_scenario
    from fleetsim.runtime.session import RunSetup
    from fleetsim.views.monitor import PlainObserver

    clear(run.out_dir)
    began = time.perf_counter()
    with (run.out_dir.parent / f"{run.out_dir.name}.log").open("w") as run_log:
        summary = asyncio.run(run_scenario(RunSetup(run.scenario, run.source), run.out_dir,
                                           PlainObserver(run.out_dir, run_log)))
    return Outcome(summary["final_accuracy"], time.perf_counter() - began)


def clear(run_dir: Path) -> None:
    """Remove what a killed run left; make the parent directory."""
    import shutil

    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
