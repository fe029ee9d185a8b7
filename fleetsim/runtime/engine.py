"""The engine: the one module that wires the others, round after round.

Per round: select devices -> policy plans -> cost model -> SimPy clock decides who
finishes -> hosts train the finishers for real -> policy aggregates (updates sorted by
device id) -> evaluate -> records. Simulate, then execute: only devices the clock lets
finish are trained. Ray's completion order never reaches a simulated result.
Asynchronous mode (FedBuff) plays server steps instead: `fleetsim.runtime.buffered`.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fleetsim.device.submodel import residual_problem
from fleetsim.errors import FleetsimError
from fleetsim.policy import clock_job
from fleetsim.runtime.checkpoint import (
    Checkpoint,
    output_offsets,
    save_checkpoint,
)
from fleetsim.runtime.session import (
    JOB_STREAMS,
    ROUND_STREAMS,
    Run,
    RunSetup,
    prepare_run,
    resume_point,
    seed_of,
    stream,
    training_defaults,
)
from fleetsim.runtime.workers import Job, JobResult
from fleetsim.types import (
    DeviceRecord,
    Evaluation,
    LoraSpec,
    ModelInfo,
    ModelState,
    RoundContext,
    RoundRecord,
    StepRecord,
    TrainingPlan,
)
from fleetsim.views.export import export_csv
from fleetsim.views.fairness import fairness
from fleetsim.views.metrics import read_jsonl
from fleetsim.world.clock import ClockJob, RoundTiming
from fleetsim.zoo.model import block_group

log = logging.getLogger(__name__)
# test hook for resume: "<round>:records" or "<round>:checkpoint" kills the driver
# (SIGKILL) right after that round's records or its checkpoint are written
KILL_AT = "FLEETSIM_KILL_AT"


class Observer(Protocol):
    """Receives progress; the engine never prints."""

    def on_pretrain(self, step: int, total: int, loss: float) -> None: ...
    def on_start(self, info: dict[str, Any]) -> None: ...
    def on_round(self, record: RoundRecord, devices: Sequence[DeviceRecord]) -> None: ...
    def on_finish(self, summary: dict[str, Any]) -> None: ...


async def run_scenario(run_setup: RunSetup, out_dir: Path, observer: Observer,
                       resume: bool = False) -> dict[str, Any]:
    """Run every round of a prepared scenario (with `resume`, from the checkpoint in
    `out_dir` on); returns the summary (also written). A checkpoint follows each round."""
    run = await prepare_run(run_setup, out_dir, observer)  # imports a user policy first
    try:
        resumed = resume_point(run, out_dir) if resume else None
        if resumed is None:
            state, records, devices = run.initial_state, [], []
            initial = await evaluate(run, state, -1)
        else:
            state, initial = resumed.state, resumed.initial
            records, devices = resumed.records, resumed.devices
        observer.on_start({**run.describe(), "initial_accuracy": initial.accuracy,
                           "resumed_after_round": len(records) - 1 if resumed else None})
        if run.scenario.selection.mode == "async":
            from fleetsim.runtime.buffered import play_async  # it builds on this module

            state = await play_async(run, out_dir, state, initial, records,
                                     resumed.versions if resumed else {})
        else:
            state = await play_rounds(run, out_dir, state, initial, records, devices)
        class_accuracy = {name: (await evaluate(run, state, len(records) - 1, windows)).accuracy
                          for name, windows in run.class_windows.items()}
        summary = summarize(run, initial, records)
        summary["fairness"] = fairness(read_jsonl(out_dir / "devices.jsonl"), class_accuracy)
        run.writer.write_summary(summary)
        export_csv(out_dir)
        observer.on_finish(summary)
        return summary
    finally:
        run.close()


async def play_rounds(run: Run, out_dir: Path, state: ModelState, initial: Evaluation,
                      records: list[RoundRecord], devices: list[DeviceRecord]) -> ModelState:
    """Every synchronous round from len(records) on, a checkpoint after each; appends to
    `records`, returns the last global state."""
    for r in range(len(records), run.scenario.rounds):
        record, devices, state = await play_round(run, r, state,
                                                  records[-1] if records else None, devices)
        records.append(record)
        killed_at(r, "records")
        save_checkpoint(out_dir, Checkpoint(r, state, policy_state(run.policy),
                                            run.clock.now_s, run.fleet.snapshot(),
                                            asdict(initial), output_offsets(out_dir)))
        killed_at(r, "checkpoint")
    return state


def killed_at(r: int, point: str) -> None:
    """The KILL_AT test hook: a kill at a chosen point, whatever the timing."""
    if os.environ.get(KILL_AT) == f"{r}:{point}":
        os.kill(os.getpid(), signal.SIGKILL)


async def play_round(run: Run, r: int, state: ModelState, previous: RoundRecord | None,
                     previous_devices: Sequence[DeviceRecord]
                     ) -> tuple[RoundRecord, list[DeviceRecord], ModelState]:
    """One round, start to end; returns its records and the new global state."""
    wall_start = time.perf_counter()
    select_rng, policy_rng, clock_rng = (np.random.default_rng(s) for s in
                                         stream(run.scenario.seed, ROUND_STREAMS, r).spawn(3))
    now = run.clock.now_s
    sel = run.scenario.selection
    run.fleet.advance(now)
    online = run.fleet.online(now)
    ctx = RoundContext(r, run.scenario.rounds, now, run.select(select_rng, online, now),
                       run.model, training_defaults(run.scenario, r), sel.deadline_s, previous,
                       policy_rng, tuple(previous_devices))
    plans = checked_plans(ctx, run.policy.plan_round(ctx))
    devices = {d.device_id: d for d in ctx.devices}
    jobs = [replace(clock_job(run.model.config, plan, devices[d], ctx.training.seq_len),
                    offline_at_s=run.fleet.offline_at(d, now)) for d, plan in plans.items()]
    timing = run.clock.run_round(jobs, keep=sel.devices_per_round, deadline_s=sel.deadline_s,
                                 rng=clock_rng)
    finished = sorted(timing.finished_devices.items())
    train_jobs = [Job(d, r, plans[d], _job_seed(run.scenario.seed, r, d),
                      run.fleet.memory_during(d, now, now + t.busy_s)) for d, t in finished]
    results = await run.pool.train_all(train_jobs, run.pool.share(state))
    updates = [res.update for res in results if res.update is not None]
    aggregated = len(updates) >= sel.min_updates
    if aggregated:
        state = run.policy.aggregate(ctx, state, updates)
    last = r == run.scenario.rounds - 1
    due = last or (r + 1) % run.scenario.eval.every == 0
    evaluation = await evaluate(run, state, r) if due else None
    caps = {job.device_id: job.mem_cap_bytes for job in train_jobs}
    device_records = _device_records(ctx, plans, {j.device_id: j for j in jobs}, timing,
                                     results, caps)
    online_by_class = run.fleet.count_by_class(online)
    record = _round_record(r, timing, time.perf_counter() - wall_start, evaluation,
                           device_records, results, aggregated, online_by_class)
    run.writer.write_round(record, device_records)
    run.observer.on_round(record, device_records)
    return record, device_records, state


async def evaluate(run: Run, state: ModelState, r: int, windows: Any = None) -> Evaluation:
    """Evaluate the model the policy defines after round `r` (-1: before the first) on
    `windows` (default: the run's evaluation sample)."""
    plan = evaluation_plan(run.model, run.policy, r)
    metrics = await run.pool.evaluate(run.pool.share(state),
                                      run.eval_windows if windows is None else windows, plan)
    return Evaluation(metrics["accuracy"], metrics["loss"])


def policy_state(policy: Any) -> dict[str, Any] | None:
    """What a policy keeps across rounds, as plain values (its optional `state_dict()`);
    None for a policy whose state after `setup` never changes."""
    save = getattr(policy, "state_dict", None)
    return None if save is None else save()


def evaluation_plan(model: ModelInfo, policy: Any, r: int) -> TrainingPlan:
    """The evaluated model as a plan to run forward: the whole model with the global
    adapters, or the sub-model a policy's `evaluated_slices(r)` names."""
    pick = getattr(policy, "evaluated_slices", None)
    slices = pick(r) if pick is not None else ()
    return TrainingPlan(train=(), frozen=model.groups, local_steps=1, batch_size=1, lr=0.0,
                        lora=model.adapters, slices=slices)


def _job_seed(seed: int, r: int, device_id: int) -> int:
    return seed_of(seed, JOB_STREAMS, r, device_id)


def _device_records(ctx: RoundContext, plans: Mapping[int, TrainingPlan],
                    jobs: Mapping[int, ClockJob], timing: RoundTiming,
                    results: Sequence[JobResult], caps: Mapping[int, int]
                    ) -> list[DeviceRecord]:
    """One record per selected device. Stragglers carry their planned FLOPs and
    durations: the work they spent before the round ended without them. The memory cap
    is the one the device trained under (a squeeze mid-round lowers it)."""
    by_id = {res.device_id: res for res in results}
    times = {t.device_id: t for t in timing.devices}
    records = []
    for device in ctx.devices:
        d = device.device_id
        job, t, res = jobs.get(d), times.get(d), by_id.get(d)
        status = ("skipped" if job is None else res.status if res
                  else "offline" if t is not None and t.offline else "straggler")
        records.append(DeviceRecord(
            device_id=d, device_class=device.device_class, round=ctx.round,
            plan=describe_plan(plans.get(d)), status=status,
            peak_mem_bytes=res.peak_mem_bytes if res else 0,
            mem_cap_bytes=caps.get(d, device.memory_bytes),
            flops=res.flops if res else job.flops if job else 0.0,
            compute_s=t.compute_s if t else 0.0, download_s=t.download_s if t else 0.0,
            upload_s=t.upload_s if t else 0.0,
            bytes_up=job.upload_bytes if job and res and res.status == "ok" else 0,
            bytes_down=job.download_bytes if job else 0,
            host=res.host if res else "", loss=res.loss if res else None,
            error=res.error if res else ""))
    return records


def checked_plans(ctx: RoundContext, plans: Mapping[int, TrainingPlan]
                  ) -> dict[int, TrainingPlan]:
    """The policy's plans in device order, after checking they are plans hosts can run."""
    selected = {d.device_id for d in ctx.devices}
    for device_id, plan in plans.items():
        problem = ("was not selected" if device_id not in selected
                   else "names unknown groups" if not set(plan.train) | set(plan.frozen)
                   <= set(ctx.model.groups)
                   else _slice_problem(plan, ctx.model.config)
                   or _adapter_problem(plan, ctx.model.adapters))
        if problem:
            raise FleetsimError(f"policy planned device {device_id}, which {problem}")
    return dict(sorted(plans.items()))


def _slice_problem(plan: TrainingPlan, config: Any) -> str:
    if not plan.slices:  # the whole model: nothing to check (and planners call this a lot)
        return ""
    blocks = {block_group(b) for b in range(config.n_layer)}
    for group, part in plan.slices:
        if group not in blocks or plan.lora is not None:
            return "slices a block it cannot (LoRA plans and non-blocks cannot be sliced)"
        for ids, total in ((part.heads, config.n_head), (part.units, config.ffn_size)):
            if not ids or list(ids) != sorted(set(ids)) or ids[0] < 0 or ids[-1] >= total:
                return f"slices {group} with bad indices (sorted, distinct, < {total})"
    return residual_problem(plan.slices, config)


def _adapter_problem(plan: TrainingPlan, adapters: LoraSpec | None) -> str:
    if plan.lora is None:
        return ""
    if adapters is None or plan.lora.targets != adapters.targets \
            or plan.lora.scale != adapters.scale or plan.lora.rank > adapters.rank:
        return "trains LoRA adapters the global model does not carry"
    return ""


def describe_plan(plan: Any) -> str:
    """A short, stable text for a plan: trained and frozen groups, adapters, and the
    heads/units (and residual channels, when sliced) each sliced block keeps."""
    if plan is None:
        return "-"
    text = f"train={','.join(plan.train)};frozen={','.join(plan.frozen)}"
    if plan.lora is not None:
        text += f";lora={plan.lora.rank}:{','.join(plan.lora.targets)}"
    if plan.slices:
        text += ";slices=" + ",".join(
            f"{g}:{len(p.heads)}h{len(p.units)}u" + (f"{len(p.residual)}r" if p.residual else "")
            for g, p in plan.slices)
    return text


def _round_record(r: int, timing: RoundTiming, wall_s: float, evaluation: Evaluation | None,
                  devices: Sequence[DeviceRecord], results: Sequence[JobResult],
                  aggregated: bool, online_by_class: dict[str, int]) -> RoundRecord:
    status = Counter(d.status for d in devices)
    ok = [res for res in results if res.status == "ok" and res.loss is not None]
    weight = sum(res.update.weight for res in ok if res.update)
    train_loss = (sum(res.loss * res.update.weight for res in ok if res.update
                      and res.loss is not None) / weight if weight else None)
    return RoundRecord(
        round=r, sim_time_s=timing.end_s, round_time_s=timing.end_s - timing.start_s,
        wall_time_s=wall_s, accuracy=evaluation.accuracy if evaluation else None,
        loss=evaluation.loss if evaluation else None, train_loss=train_loss,
        selected=len(devices), completed=status["ok"], stragglers=status["straggler"],
        offline=status["offline"], oom=status["oom"], failed=status["failed"],
        skipped=status["skipped"], bytes_up=sum(d.bytes_up for d in devices),
        bytes_down=sum(d.bytes_down for d in devices), aggregated=aggregated,
        online=sum(online_by_class.values()), online_by_class=online_by_class)


def summarize(run: Run, initial: Evaluation, records: Sequence[RoundRecord]) -> dict[str, Any]:
    evaluated = [r for r in records if r.accuracy is not None]
    final = evaluated[-1] if evaluated else None
    return {
        **run.describe(),
        "rounds_completed": len(records),
        "initial_accuracy": initial.accuracy,
        "initial_loss": initial.loss,
        "final_accuracy": final.accuracy if final else None,
        "final_loss": final.loss if final else None,
        "best_accuracy": max((r.accuracy for r in evaluated if r.accuracy is not None),
                             default=None),
        "sim_time_s": records[-1].sim_time_s if records else 0.0,
        "wall_time_s": time.perf_counter() - run.wall_start,
        "bytes_up": sum(r.bytes_up for r in records),
        "bytes_down": sum(r.bytes_down for r in records),
        "device_rounds": {k: sum(getattr(r, k) for r in records) for k in
                    ("selected", "completed", "stragglers", "offline", "oom", "failed",
                     "skipped")},
        "rounds_aggregated": sum(r.aggregated for r in records),
        **({"stale": sum(r.stale for r in records if isinstance(r, StepRecord))}
           if run.scenario.selection.mode == "async" else {}),
    }


