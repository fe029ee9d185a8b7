"""Helpers for testing a policy without a run: realistic devices, contexts and updates,
each in one call.

    from fleetsim.testing import round_context, setup_context
    policy = create_policy("path/to/mine.py:Mine", {"k": 2})
    choice = policy.setup(setup_context(["phone_low", "phone_flagship"]))
    plans = policy.plan_round(round_context(["phone_low", "phone_flagship"], choice.model_name))

Devices come from the class profiles in devices/ (any field of DeviceState can be
changed, e.g. `device("phone_low", memory_bytes=16 << 20)`); the training settings are
those of a scenario that sets none (`scenario_training`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fleetsim.config.scenario import DEVICES_DIR, Scenario, load_device_class
from fleetsim.runtime.session import model_info, training_defaults
from fleetsim.types import (
    MIB,
    DeviceRecord,
    DeviceState,
    LoraSpec,
    RoundContext,
    SetupContext,
    Status,
    TrainingDefaults,
    Update,
)

Devices = Sequence[str | DeviceState]  # class names (ids in order) or devices as they are


def device(device_class: str = "phone_mid", device_id: int = 0, num_examples: int = 64,
           **changes: float | int | str) -> DeviceState:
    """A device of a class in devices/ as it is at time 0, with `changes` applied."""
    p = load_device_class(device_class, DEVICES_DIR, 0)
    state = DeviceState(device_id, p.name, int(p.memory_mb * MIB), p.flops_per_s,
                        p.uplink_bps, p.downlink_bps, p.latency_s, p.compute_jitter,
                        num_examples)
    return DeviceState(**{**state.__dict__, **changes})  # type: ignore[arg-type]


def fleet(devices: Devices) -> tuple[DeviceState, ...]:
    """Devices from class names (numbered in order) or as given."""
    return tuple(d if isinstance(d, DeviceState) else device(d, i) for i, d in enumerate(devices))


def scenario_training(r: int = 0, rounds: int = 10) -> TrainingDefaults:
    """The training settings of round `r` of a scenario that sets none."""
    scenario = Scenario.model_validate({"rounds": rounds,
                                        "fleet": [{"class": "phone_mid", "count": 1}]})
    return training_defaults(scenario, r)


def setup_context(devices: Devices = ("phone_low", "phone_mid", "phone_flagship"),
                  model: str = "gpt-4x128", *, training: TrainingDefaults | None = None,
                  deadline_s: float = 600.0, total_rounds: int = 10) -> SetupContext:
    """What `setup` sees: the whole fleet at time 0 and the scenario's model."""
    return SetupContext(fleet(devices), model, training or scenario_training(0, total_rounds),
                        deadline_s, total_rounds)


def round_context(devices: Devices = ("phone_low", "phone_mid", "phone_flagship"),
                  model: str = "gpt-4x128", *, round: int = 0, total_rounds: int = 10,
                  adapters: LoraSpec | None = None, training: TrainingDefaults | None = None,
                  deadline_s: float = 600.0, seed: int = 0,
                  previous_devices: Sequence[DeviceRecord] = ()) -> RoundContext:
    """What `plan_round` and `aggregate` see: the selected devices, the global model
    (with `adapters`, as a LoRA policy's `setup` chose), the round's training settings and
    a seeded generator; `previous_devices`: the last round's records."""
    return RoundContext(round, total_rounds, 0.0, fleet(devices), model_info(model, adapters),
                        training or scenario_training(round, total_rounds), deadline_s, None,
                        np.random.default_rng(seed), tuple(previous_devices))


def record(device_id: int, status: Status, round: int = 0, device_class: str = "phone_mid",
           error: str = "") -> DeviceRecord:
    """A device's record of a past round, as `previous_devices` holds it."""
    return DeviceRecord(device_id, device_class, round, "-", status, 0, 0, 0.0, 0.0, 0.0, 0.0,
                        0, 0, "", None, error)


def update(device_id: int, tensors: Mapping[str, np.ndarray], weight: float = 1.0) -> Update:
    """A device's update of whole tensors as the server receives it."""
    return Update(device_id, weight, dict(tensors))
