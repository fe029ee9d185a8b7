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

from fleetsim.clock import Clock
from fleetsim.cost import group_param_counts
from fleetsim.data import FederatedData, NotEnoughClients, build_federated
from fleetsim.errors import ConfigError
from fleetsim.fleet import MIB, Fleet, build_fleet
from fleetsim.lora import init_adapters
from fleetsim.metrics import RunWriter
from fleetsim.model import ZOO, layer_groups
from fleetsim.policy import Policy
from fleetsim.pretrain import load_pretrained
from fleetsim.scenario import Scenario, device_profiles, scenario_to_yaml
from fleetsim.types import (
    DeviceState,
    ModelInfo,
    ModelState,
    OptimizerSpec,
    SetupContext,
    TrainingDefaults,
)
from fleetsim.workers import DryPool, HostOptions, HostPool
from policies import create_policy

log = logging.getLogger(__name__)
# The RLIMIT_DATA safety net sits this far above a host's largest device budget.
RLIMIT_HEADROOM_BYTES = 2 << 30
# Every random stream of a run has its own domain, so no two can coincide.
ROUND_STREAMS, JOB_STREAMS, EVAL_STREAM, ADAPTER_STREAM = 1, 2, 3, 4
FAULT_STREAM = 6  # (5 is the fleet's: fleetsim.fleet.FLEET_STREAM)
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


@dataclass
class Run:
    scenario: Scenario
    fleet: Fleet
    policy: Policy
    model: ModelInfo
    initial_state: ModelState
    pool: HostPool | DryPool
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


def training_defaults(scenario: Scenario, r: int) -> TrainingDefaults:
    """The scenario's training settings for round `r` (the lr follows the schedule)."""
    t = scenario.training
    lr = round_lr(t.lr, t.schedule, t.lr_min_ratio, r, scenario.rounds)
    optimizer = OptimizerSpec(t.optimizer.name, t.optimizer.momentum, t.optimizer.weight_decay)
    return TrainingDefaults(t.local_steps, t.local_epochs, t.batch_size, lr, optimizer,
                            scenario.data.seq_len)


def round_lr(lr: float, schedule: str, min_ratio: float, r: int, rounds: int) -> float:
    """The round's learning rate: constant, or cosine from lr down to lr * min_ratio."""
    if schedule == "constant" or rounds <= 1:
        return lr
    floor = lr * min_ratio
    return floor + 0.5 * (lr - floor) * (1 + math.cos(math.pi * r / (rounds - 1)))


async def prepare_run(setup: RunSetup, out_dir: Path, observer: Any) -> Run:
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
    state = {} if data is None else load_pretrained(choice.model_name, observer.on_pretrain)
    if choice.adapters is not None and data is not None:
        adapters = init_adapters(config, choice.adapters, seed_of(scenario.seed, ADAPTER_STREAM))
        state = {**state, **adapters}
    groups = tuple(layer_groups(config.n_layer))
    counts = group_param_counts(config)
    info = ModelInfo(choice.model_name, config.n_layer, groups, {g: counts[g] for g in groups},
                     config, choice.adapters)
    writer = RunWriter(out_dir)
    writer.write_text("scenario.yaml", scenario_to_yaml(scenario))
    if data is None:
        return Run(scenario, fleet, policy, info, state, DryPool(), None, {}, Clock(), writer,
                   observer, time.perf_counter())
    pool = start_pool(scenario, config, data)
    try:
        limit, seed = scenario.eval.max_samples, scenario.seed
        windows = pool.share_parts(eval_sample(data.clients, limit, seed), EVAL_PARTS)
        by_class: dict[str, list[Any]] = {}
        for client, profile in zip(data.clients, fleet.profiles, strict=True):
            by_class.setdefault(profile.name, []).append(client)
        class_windows = {name: pool.share_parts(eval_sample(clients, limit, seed), EVAL_PARTS)
                         for name, clients in sorted(by_class.items())}
    except BaseException:
        pool.close()
        writer.close()
        raise
    return Run(scenario, fleet, policy, info, state, pool, windows, class_windows, Clock(),
               writer, observer, time.perf_counter())


def load_data(scenario: Scenario, source: Path) -> FederatedData:
    d = scenario.data
    try:
        return build_federated(scenario.num_devices, scenario.seed, partition=d.partition,
                               alpha=d.alpha, seq_len=d.seq_len,
                               train_fraction=d.train_fraction,
                               min_train_samples=d.clients.min_train_samples,
                               max_train_samples=d.clients.max_train_samples)
    except NotEnoughClients as err:
        raise ConfigError(source, "fleet", f"one client per device: {err}") from None


def start_pool(scenario: Scenario, config: Any, data: FederatedData) -> HostPool:
    workers = scenario.workers
    windows = [c.train for c in data.clients]
    largest_cap = max(p.memory_mb for p in device_profiles(scenario)) * MIB
    options = HostOptions(threads=workers.threads_per_host, device=workers.device,
                          rlimit_margin_bytes=int(largest_cap + RLIMIT_HEADROOM_BYTES))
    slow = {f.host: f.delay_s for f in scenario.faults if f.kind == "slow_host"}
    if workers.backend == "local":
        return HostPool.start("local", 1, config, windows, options, slow=slow)
    import ray

    if not ray.is_initialized():
        ray.init(address=workers.address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    if workers.count == "auto":
        count = max(1, int(ray.cluster_resources().get("CPU", 1) // workers.threads_per_host))
    else:
        count = workers.count
    return HostPool.start("ray", count, config, windows, options, workers.gpus_per_host, slow)


def eval_sample(clients: Sequence[Any], max_samples: int, seed: int) -> np.ndarray:
    """Up to `max_samples` test windows drawn evenly from the clients, fixed by the seed."""
    windows = np.concatenate([c.test for c in clients])
    if len(windows) > max_samples:
        rng = np.random.default_rng(stream(seed, EVAL_STREAM))
        windows = windows[np.sort(rng.choice(len(windows), size=max_samples, replace=False))]
    return windows
