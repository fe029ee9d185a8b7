"""The fleet: every device's profile and, at any simulated time, its state: online or
not, and its current constraints (scheduled events, random walks of bandwidth).

Devices are data; the engine asks and the fleet answers. Everything that draws does so
from generators seeded per run, and `snapshot`/`restore` carry them across a resume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fleetsim.config.scenario import (
    DeviceProfile,
    EventConfig,
    FleetEntry,
    Scenario,
    ThrottleConfig,
    WalkConfig,
)
from fleetsim.types import MIB, DeviceState
from fleetsim.world.availability import Always, Availability, Bernoulli, Markov, Trace, load_trace

FLEET_STREAM = 5  # the fleet's random streams (see session.stream)


@dataclass
class Group:
    """A fleet entry's devices: ids [first, first + count) and their dynamics."""

    first: int
    count: int
    availability: Availability
    walk: WalkConfig | None
    walk_rng: np.random.Generator
    walk_factor: np.ndarray  # current bandwidth multiplier per device
    walk_steps: int = 0  # walk steps taken so far


class Fleet:
    def __init__(self, profiles: Sequence[DeviceProfile], num_examples: Sequence[int],
                 groups: Sequence[Group] = (), events: Sequence[EventConfig] = (),
                 throttles: Sequence[ThrottleConfig | None] = ()) -> None:
        if len(profiles) != len(num_examples):
            raise ValueError("one example count per device")
        self.profiles = tuple(profiles)
        self.num_examples = tuple(num_examples)
        self.groups = list(groups) or [_group(0, len(profiles), Always(len(profiles)), None,
                                              np.random.default_rng(0))]
        self.events = tuple(events)
        self.throttles = tuple(throttles) or (None,) * len(profiles)
        self.class_names = sorted({p.name for p in self.profiles})
        self.class_index = np.array([self.class_names.index(p.name) for p in self.profiles])

    def __len__(self) -> int:
        return len(self.profiles)

    def _group_of(self, device_id: int) -> Group:
        return next(g for g in self.groups if g.first <= device_id < g.first + g.count)

    def state(self, device_id: int, now_s: float) -> DeviceState:
        """The device as it is at simulated time `now_s`."""
        p = self.profiles[device_id]
        group = self._group_of(device_id)
        walk = float(group.walk_factor[device_id - group.first])
        memory, flops, up, down = self._factors(device_id, now_s)
        throttle = self.throttles[device_id]
        return DeviceState(
            device_id=device_id,
            device_class=p.name,
            memory_bytes=int(p.memory_mb * MIB * memory),
            flops_per_s=p.flops_per_s * flops,
            uplink_bps=p.uplink_bps * up * walk,
            downlink_bps=p.downlink_bps * down * walk,
            latency_s=p.latency_s,
            compute_jitter=p.compute_jitter,
            num_examples=self.num_examples[device_id],
            throttle_after_s=throttle.after_s if throttle else math.inf,
            throttle_factor=throttle.factor if throttle else 1.0,
        )

    def _factors(self, device_id: int, now_s: float) -> tuple[float, float, float, float]:
        """The product of the events in force: memory, FLOP rate, uplink, downlink."""
        factors = np.ones(4)
        name = self.profiles[device_id].name
        for event in self.events:
            if event.at_s <= now_s < (event.until_s or math.inf) and _names(event, device_id,
                                                                             name):
                factors *= (event.memory_factor, event.flops_factor, event.uplink_factor,
                            event.downlink_factor)
        return float(factors[0]), float(factors[1]), float(factors[2]), float(factors[3])

    def memory_during(self, device_id: int, start_s: float, end_s: float) -> int:
        """The smallest memory budget the device has in [start_s, end_s]: a squeeze in
        the middle of its round is the cap its training meets."""
        times = [start_s, *(e.at_s for e in self.events if start_s < e.at_s <= end_s)]
        return min(self.state(device_id, t).memory_bytes for t in times)

    def online(self, now_s: float) -> np.ndarray:
        """Ids of the devices available at `now_s`, ascending."""
        ids = [g.first + np.flatnonzero(g.availability.online(now_s)) for g in self.groups]
        return np.concatenate(ids) if ids else np.zeros(0, int)

    def count_by_class(self, ids: np.ndarray) -> dict[str, int]:
        counts = np.bincount(self.class_index[ids], minlength=len(self.class_names))
        return {name: int(n) for name, n in zip(self.class_names, counts, strict=True) if n}

    def offline_at(self, device_id: int, now_s: float) -> float:
        """When the device, online at `now_s`, next goes offline (inf: not planned)."""
        group = self._group_of(device_id)
        return group.availability.offline_at(device_id - group.first, now_s)

    def advance(self, now_s: float) -> None:
        """Move the bandwidth random walks on to `now_s` (one step per `every_s`)."""
        for group in self.groups:
            if group.walk is None:
                continue
            steps = int(now_s // group.walk.every_s) - group.walk_steps
            if steps > 0:
                z = group.walk_rng.standard_normal(group.count) * math.sqrt(steps)
                group.walk_factor = np.clip(group.walk_factor * np.exp(group.walk.sigma * z),
                                            group.walk.low, group.walk.high)
                group.walk_steps += steps

    def snapshot(self) -> list[dict[str, Any]]:
        return [{"availability": g.availability.snapshot(),
                 "walk_rng": g.walk_rng.bit_generator.state,
                 "walk_factor": g.walk_factor.copy(), "walk_steps": g.walk_steps}
                for g in self.groups]

    def restore(self, snap: list[dict[str, Any]]) -> None:
        for group, saved in zip(self.groups, snap, strict=True):
            group.availability.restore(saved["availability"])
            group.walk_rng.bit_generator.state = saved["walk_rng"]
            group.walk_factor, group.walk_steps = saved["walk_factor"], saved["walk_steps"]


def _names(event: EventConfig, device_id: int, device_class: str) -> bool:
    if event.devices is not None and device_id not in event.devices:
        return False
    return event.device_class is None or event.device_class == device_class


def _group(first: int, count: int, availability: Availability, walk: WalkConfig | None,
           rng: np.random.Generator) -> Group:
    return Group(first, count, availability, walk, rng, np.ones(count))


def build_fleet(scenario: Scenario, profiles: Sequence[DeviceProfile],
                num_examples: Sequence[int]) -> Fleet:
    """The scenario's fleet: each entry's devices with their availability and walks."""
    groups: list[Group] = []
    throttles: list[ThrottleConfig | None] = []
    first = 0
    for index, entry in enumerate(scenario.fleet):
        seeds = np.random.SeedSequence(scenario.seed, spawn_key=(FLEET_STREAM, index)).spawn(2)
        availability = make_availability(entry, np.random.default_rng(seeds[0]))
        groups.append(_group(first, entry.count, availability, entry.bandwidth_walk,
                             np.random.default_rng(seeds[1])))
        throttles += [entry.throttle] * entry.count
        first += entry.count
    return Fleet(profiles, num_examples, groups, scenario.events, throttles)


def make_availability(entry: FleetEntry, rng: np.random.Generator) -> Availability:
    a = entry.availability
    if a.kind == "bernoulli":
        return Bernoulli(entry.count, a.p, rng)
    if a.kind == "markov":
        return Markov(entry.count, a.mean_online_s, a.mean_offline_s, rng)
    if a.kind == "trace":
        assert a.trace is not None  # the schema requires it
        return Trace(*load_trace(Path(a.trace), entry.count))
    return Always(entry.count)

