"""A run's long-lived pieces, built once from a scenario: data, fleet, policy, model,
host pool, clock and output writer. The engine drives them round by round."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fleetsim.config.scenario import Scenario, device_profiles, scenario_to_yaml
from fleetsim.device.cost import group_param_counts
from fleetsim.device.lora import init_adapters
from fleetsim.device.training import scratch_state
from fleetsim.errors import ConfigError
from fleetsim.policy import Policy
from fleetsim.runtime.checkpoint import load_checkpoint, truncate_outputs
from fleetsim.runtime.cluster import launch_hosts
from fleetsim.runtime.faults import with_faults
from fleetsim.runtime.workers import DryPool, Pool
from fleetsim.types import (
    DeviceRecord,
    DeviceState,
    Evaluation,
    JobRecord,
    LoraSpec,
    ModelInfo,
    ModelState,
    OptimizerSpec,
    RoundRecord,
    SetupContext,
    StepRecord,
    TrainingDefaults,
)
from fleetsim.views.metrics import RunWriter, read_jsonl
from fleetsim.world.clock import Clock
from fleetsim.world.fleet import Fleet, build_fleet
from fleetsim.zoo.data import FederatedData, NotEnoughClients, build_federated
from fleetsim.zoo.model import ZOO, layer_groups
from fleetsim.zoo.pretrain import load_pretrained
from policies import create_policy

log = logging.getLogger(__name__)
# Every random stream of a run has its own domain, so no two can coincide.
ROUND_STREAMS, JOB_STREAMS, EVAL_STREAM, ADAPTER_STREAM = 1, 2, 3, 4
# 5 is the fleet's (fleetsim.world.fleet.FLEET_STREAM), 6 the faults' (fleetsim.runtime.faults)
SCRATCH_STREAM = 7  # a from-scratch model's initial weights
EVAL_PARTS = 8  # evaluation windows are cut into this many parts, spread over the hosts
DRY_RUN_EXAMPLES = 64  # training windows per device in a dry run (no data is loaded)


def stream(seed: int, domain: int, *key: int) -> np.random.SeedSequence:
    """The seed sequence of one random stream: (run seed; domain, round, device...)."""
    return np.random.SeedSequence(seed, spawn_key=(domain, *key))


def seed_of(seed: int, domain: int, *key: int) -> int:
    """One integer seed drawn from a stream."""
    return int(stream(seed, domain, *key).generate_state(1)[0])


@dataclass(frozen=True)
class RunSetup:
    """What `fleetsim run` hands the engine: the scenario and where it came from."""

    scenario: Scenario
    source: Path  # the scenario file, for error messages
    dry_run: bool = False  # clock, fleet and planning only: no data, weights or training
    hosts: Pool | None = None  # launched early by the caller (else when the run starts)


@dataclass(frozen=True)
class Run:
    """A run's long-lived pieces, built once (`prepare_run`); the engine reads them and
    only the stateful ones (fleet, policy, clock, pool, writer) change as rounds go."""

    scenario: Scenario
    fleet: Fleet
    policy: Policy
    model: ModelInfo
    initial_state: ModelState
    pool: Pool
    eval_windows: Any  # the evaluation windows' parts, shared
    class_windows: dict[str, Any]  # each device class's own test windows' parts, shared
    clock: Clock
    writer: RunWriter
    observer: Any
    wall_start: float

    def select(self, rng: np.random.Generator, online: np.ndarray, now_s: float
               ) -> tuple[DeviceState, ...]:
        """Sample k * (1 + over_selection) of the online devices, in device-id order."""
        sel = self.scenario.selection
        k = sel.devices_per_round
        extra = math.ceil(round(k * sel.over_selection, 9))  # no float noise: 50 x 0.1 is 5
        count = min(len(online), k + extra)
        picked = sorted(int(i) for i in rng.choice(online, size=count, replace=False))
        return tuple(self.fleet.state(i, now_s) for i in picked)

    def describe(self) -> dict[str, Any]:
        return {"scenario": self.scenario.name, "policy": self.scenario.policy.name,
                "model": self.model.name, "rounds": self.scenario.rounds,
                "devices": len(self.fleet), "hosts": len(self.pool.hosts),
                "seed": self.scenario.seed,
                "events": [e.model_dump(by_alias=True, exclude_none=True)
                           for e in self.scenario.events]}

    def close(self) -> None:
        self.pool.close()
        self.writer.close()


def model_info(name: str, adapters: LoraSpec | None = None) -> ModelInfo:
    """What policies know about a zoo model (carrying `adapters`, if any)."""
    config = ZOO[name].config
    groups = tuple(layer_groups(config.n_layer))
    counts = group_param_counts(config)
    return ModelInfo(name, config.n_layer, groups, {g: counts[g] for g in groups}, config,
                     adapters)


@dataclass(frozen=True)
class Resumed:
    """Where a resumed run goes on: the checkpoint's global state and first evaluation,
    the rounds played and the last one's device records."""

    state: ModelState
    initial: Evaluation
    records: list[RoundRecord]
    devices: list[DeviceRecord]
    versions: dict[int, ModelState]  # asynchronous: older versions jobs in flight need


def resume_point(run: Run, out_dir: Path) -> Resumed | None:
    """Bring a prepared run to its newest intact checkpoint (fleet, clock and policy
    restored, what was written after it truncated); None if there is none."""
    ckpt = load_checkpoint(out_dir)
    if ckpt is None:
        return None
    truncate_outputs(out_dir, ckpt.offsets)  # the writer appends: what followed it goes
    run.clock.restore(ckpt.clock_s)
    if ckpt.fleet is not None:  # an asynchronous run replays its clock, fleet included
        run.fleet.restore(ckpt.fleet)
    if ckpt.policy is not None:
        run.policy.load_state_dict(ckpt.policy)  # type: ignore[attr-defined]
    step, job = ((StepRecord, JobRecord) if run.scenario.selection.mode == "async"
                 else (RoundRecord, DeviceRecord))
    records = [step(**row) for row in read_jsonl(out_dir / "rounds.jsonl")]
    devices = [job(**row) for row in read_jsonl(out_dir / "devices.jsonl")
               if row["round"] == ckpt.round]
    return Resumed(ckpt.state, Evaluation(**ckpt.initial), records, devices,
                   dict(ckpt.versions or {}))


def training_defaults(scenario: Scenario, r: int) -> TrainingDefaults:
    """The scenario's training settings for round `r` (the lr follows the schedule)."""
    t = scenario.training
    lr = round_lr(t.lr, t.schedule, t.lr_min_ratio, r, scenario.rounds)
    optimizer = OptimizerSpec(t.optimizer.name, t.optimizer.momentum, t.optimizer.weight_decay)
    return TrainingDefaults(t.local_steps, t.local_epochs, t.batch_size, lr, optimizer,
                            scenario.data.seq_len, scenario.model.slice_residual)


def round_lr(lr: float, schedule: str, min_ratio: float, r: int, rounds: int) -> float:
    """The round's learning rate: constant, or cosine from lr down to lr * min_ratio."""
    if schedule == "constant" or rounds <= 1:
        return lr
    floor = lr * min_ratio
    return floor + 0.5 * (lr - floor) * (1 + math.cos(math.pi * r / (rounds - 1)))


async def prepare_run(setup: RunSetup, out_dir: Path, observer: Any) -> Run:
    scenario = setup.scenario
    # the hosts start first: their processes import torch while this one loads the rest
    pool = setup.hosts or (DryPool() if setup.dry_run else launch_hosts(scenario))
    pool = with_faults(pool, scenario)
    try:
        return await _prepare(setup, out_dir, observer, pool)
    except BaseException:
        pool.close()
        raise


async def _prepare(setup: RunSetup, out_dir: Path, observer: Any, pool: Pool
                   ) -> Run:
    scenario = setup.scenario
    data = None if setup.dry_run else load_data(scenario, setup.source)
    examples = [DRY_RUN_EXAMPLES] * scenario.num_devices if data is None \
        else [len(c.train) for c in data.clients]
    fleet = build_fleet(scenario, device_profiles(scenario), examples)
    try:
        policy = create_policy(scenario.policy.name, dict(scenario.policy.params))
    except (LookupError, TypeError, ValueError) as err:  # unknown name or bad params
        raise ConfigError(setup.source, "policy", str(err)) from None
    defaults = training_defaults(scenario, 0)
    devices = tuple(fleet.state(i, 0.0) for i in range(len(fleet)))
    choice = policy.setup(SetupContext(devices, scenario.model.name, defaults,
                                       scenario.selection.deadline_s, scenario.rounds))
    if choice.model_name not in ZOO:
        raise ConfigError(setup.source, "model.name", f"unknown zoo model {choice.model_name!r};"
                          f" known: {', '.join(ZOO)}")
    config = ZOO[choice.model_name].config
    state = {} if data is None else initial_weights(scenario, choice.model_name, observer)
    if choice.adapters is not None and data is not None:
        adapters = init_adapters(config, choice.adapters, seed_of(scenario.seed, ADAPTER_STREAM))
        state = {**state, **adapters}
    info = model_info(choice.model_name, choice.adapters)
    if data is None:
        return Run(scenario, fleet, policy, info, state, pool, None, {}, Clock(),
                   start_writer(out_dir, scenario), observer, time.perf_counter())
    await pool.load(config, [c.train for c in data.clients])
    limit, seed, split = scenario.eval.max_samples, scenario.seed, scenario.eval.split
    windows = pool.share_parts(eval_sample(data.clients, limit, seed, split), EVAL_PARTS)
    by_class: dict[str, list[Any]] = {}
    for client, profile in zip(data.clients, fleet.profiles, strict=True):
        by_class.setdefault(profile.name, []).append(client)
    class_windows = {name: pool.share_parts(eval_sample(clients, limit, seed, split), EVAL_PARTS)
                     for name, clients in sorted(by_class.items())}
    return Run(scenario, fleet, policy, info, state, pool, windows, class_windows, Clock(),
               start_writer(out_dir, scenario), observer, time.perf_counter())


def initial_weights(scenario: Scenario, model_name: str, observer: Any) -> ModelState:
    """The global model's starting weights: pretrained (pretraining first if not cached),
    or with model.init scratch a random initialisation from the scenario seed."""
    if scenario.model.init == "scratch":
        return scratch_state(ZOO[model_name].config, seed_of(scenario.seed, SCRATCH_STREAM))
    return load_pretrained(model_name, observer.on_pretrain)


def start_writer(out_dir: Path, scenario: Scenario) -> RunWriter:
    """The run's output files, starting with the resolved scenario."""
    writer = RunWriter(out_dir)
    writer.write_text("scenario.yaml", scenario_to_yaml(scenario))
    return writer


def load_data(scenario: Scenario, source: Path) -> FederatedData:
    """The fleet's clients; with eval.split validation, each holds data.validation_fraction
    of its train windows out as validation (with split test, none: all of them train)."""
    d, validation = scenario.data, scenario.eval.split == "validation"
    try:
        data = build_federated(scenario.num_devices, scenario.seed, partition=d.partition,
                               alpha=d.alpha, seq_len=d.seq_len,
                               train_fraction=d.train_fraction,
                               min_train_samples=d.clients.min_train_samples,
                               max_train_samples=d.clients.max_train_samples,
                               validation_fraction=d.validation_fraction if validation else 0.0)
    except NotEnoughClients as err:
        raise ConfigError(source, "fleet", f"one client per device: {err}") from None
    if validation and not any(len(c.validation) for c in data.clients):
        raise ConfigError(source, "data.validation_fraction", "too small: no client holds a "
                          "validation window (each holds int(n * fraction) of n)")
    return data


def eval_sample(clients: Sequence[Any], max_samples: int, seed: int,
                split: str = "test") -> np.ndarray:
    """Up to `max_samples` of the clients' `split` windows (test or validation) drawn
    evenly, fixed by the seed."""
    windows = np.concatenate([getattr(c, split) for c in clients])
    if len(windows) > max_samples:
        rng = np.random.default_rng(stream(seed, EVAL_STREAM))
        windows = windows[np.sort(rng.choice(len(windows), size=max_samples, replace=False))]
    return windows
