"""The policy interface, and the helpers policies share (no policy subclasses another).

A policy decides what each selected device trains this round and how updates merge:

- `setup(ctx)` runs once and picks the model.
- `plan_round(ctx)` returns a plan per device; devices left out of the mapping sit the
  round out (recorded as `skipped`). Plans must fit the device's current memory budget
  as the cost model predicts it.
- `aggregate(ctx, state, updates)` returns a new state from the updates that arrived,
  sorted by device id; it must not mutate its inputs, and no updates means no change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar, Protocol, runtime_checkable

from fleetsim.types import (
    DeviceId,
    DeviceState,
    ModelChoice,
    ModelState,
    RoundContext,
    SetupContext,
    TrainingDefaults,
    TrainingPlan,
    Update,
)


@runtime_checkable
class Policy(Protocol):
    name: ClassVar[str]

    def setup(self, ctx: SetupContext) -> ModelChoice: ...

    def plan_round(self, ctx: RoundContext) -> Mapping[DeviceId, TrainingPlan]: ...

    def aggregate(self, ctx: RoundContext, state: ModelState,
                  updates: Sequence[Update]) -> ModelState: ...


def local_steps(device: DeviceState, training: TrainingDefaults) -> int:
    """The scenario's local steps, or its local epochs over the device's examples."""
    if training.local_steps is not None:
        return training.local_steps
    assert training.local_epochs is not None  # the schema sets exactly one
    return max(1, math.ceil(training.local_epochs * device.num_examples / training.batch_size))


def make_plan(device: DeviceState, training: TrainingDefaults, train: tuple[str, ...],
              frozen: tuple[str, ...] = ()) -> TrainingPlan:
    """A plan with the scenario's local steps, batch size, lr and optimizer."""
    return TrainingPlan(train=train, frozen=frozen, local_steps=local_steps(device, training),
                        batch_size=training.batch_size, lr=training.lr,
                        optimizer=training.optimizer)
