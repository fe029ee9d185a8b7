"""The policy interface, and the helpers policies share (no policy subclasses another).

A policy decides what each selected device trains this round and how updates merge
(docs/policies.md is the guide). It subclasses `Policy` and writes `plan_round`:

- `plan_round(ctx)` returns a plan per device; devices left out of the mapping sit the
  round out (recorded as `skipped`). Plans must fit the device's current memory budget
  as the cost model predicts it.
- `setup(ctx)` runs once and picks the model; by default the scenario's, no adapters.
- `aggregate(ctx, state, updates)` returns a new state from the updates that arrived,
  sorted by device id; it must not mutate its inputs, and no updates means no change.
  By default each element is averaged over the devices that trained it (`masked_mean`).
- `Params`: its parameters as a typed, frozen model (unknown keys refused); the
  scenario's `policy.params` are checked against it before anything starts, and the
  policy gets them as `self.params`.
- optional `evaluated_slices(r)`: the sub-model the server evaluates after round r
  (-1: before the first); without it the whole model is evaluated.
- optional `state_dict()` / `load_state_dict(state)`: what the policy changes after
  `setup` (plain JSON values), saved in each checkpoint and given back on resume; a
  policy without them must not change after `setup`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, ClassVar

from pydantic import Field

from fleetsim.config.strict import Strict
from fleetsim.device.cost import download_bytes, predict_peak_bytes, step_flops, upload_bytes
from fleetsim.device.submodel import first_ids, first_slice, residual_part, uniform, with_residual
from fleetsim.runtime.aggregate import masked_mean
from fleetsim.types import (
    DeviceId,
    DeviceState,
    LoraSpec,
    ModelChoice,
    ModelState,
    RoundContext,
    SetupContext,
    Slice,
    Slices,
    TrainingDefaults,
    TrainingPlan,
    Update,
)
from fleetsim.world.clock import ClockJob
from fleetsim.zoo.model import block_group, block_of, layer_groups


class PolicyParams(Strict):
    """A policy's parameters: none unless a policy declares its own (a subclass)."""


class Policy:
    """The base of every policy: the scenario's model, the masked mean, no parameters.
    A subclass sets `name` (lowercase, unique) and writes `plan_round`."""

    name: ClassVar[str]
    Params: ClassVar[type[PolicyParams]] = PolicyParams

    def __init__(self, params: PolicyParams | None = None) -> None:
        self.params = params if params is not None else self.Params()

    def setup(self, ctx: SetupContext) -> ModelChoice:
        return ModelChoice(ctx.model_name)

    def plan_round(self, ctx: RoundContext) -> Mapping[DeviceId, TrainingPlan]:
        raise NotImplementedError(f"{type(self).__name__} must define plan_round")

    def aggregate(self, ctx: RoundContext, state: ModelState,
                  updates: Sequence[Update]) -> ModelState:
        return masked_mean(state, updates)


def local_steps(device: DeviceState, training: TrainingDefaults) -> int:
    """The scenario's local steps, or its local epochs over the device's examples."""
    if training.local_steps is not None:
        return training.local_steps
    assert training.local_epochs is not None  # the schema sets exactly one
    return max(1, math.ceil(training.local_epochs * device.num_examples / training.batch_size))


def make_plan(device: DeviceState, training: TrainingDefaults, train: tuple[str, ...],
              frozen: tuple[str, ...] = (), lora: LoraSpec | None = None,
              slices: Slices = ()) -> TrainingPlan:
    """A plan with the scenario's local steps, batch size, lr and optimizer."""
    return TrainingPlan(train=train, frozen=frozen, local_steps=local_steps(device, training),
                        batch_size=training.batch_size, lr=training.lr,
                        optimizer=training.optimizer, lora=lora, slices=slices)


def last_blocks_plan(device: DeviceState, training: TrainingDefaults, groups: tuple[str, ...],
                     n: int) -> TrainingPlan:
    """Train the last `n` blocks and the head; the embeddings too when `n` is every
    block (CAFF's rule). Everything before runs frozen."""
    n_blocks = sum(block_of(g) is not None for g in groups)
    trained = len(groups) if n >= n_blocks else n + 1
    return make_plan(device, training, train=groups[-trained:], frozen=groups[:-trained])


def within_budgets(config: Any, plan: TrainingPlan, device: DeviceState,
                   training: TrainingDefaults, budget_s: float | None) -> bool:
    """The plan fits the device: its predicted peak memory, and, given a round's time
    budget, its nominal download + compute + upload time (the clock's formula, without
    jitter): the upload and compute budgets of the device's link and FLOP rate."""
    if predict_peak_bytes(config, plan, training.seq_len) > device.memory_bytes:
        return False
    return budget_s is None or sum(clock_job(config, plan, device, training.seq_len)
                                   .nominal_durations()) <= budget_s


def clock_job(config: Any, plan: TrainingPlan, device: DeviceState, seq_len: int) -> ClockJob:
    """What the clock needs to time this device's round under this plan."""
    return ClockJob(device.device_id, download_bytes(config, plan), upload_bytes(config, plan),
                    step_flops(config, plan, seq_len) * plan.local_steps, device.flops_per_s,
                    device.downlink_bps, device.uplink_bps, device.latency_s,
                    device.compute_jitter, device.throttle_after_s, device.throttle_factor)


def most_blocks(config: Any, device: DeviceState, training: TrainingDefaults,
                groups: tuple[str, ...], budget_s: float | None) -> int | None:
    """The largest n (trained final blocks) whose plan fits the device; None if not even
    the head alone fits. Costs grow with n, so this walks down from all blocks."""
    n_blocks = sum(block_of(g) is not None for g in groups)
    for n in range(n_blocks, -1, -1):
        plan = last_blocks_plan(device, training, groups, n)
        if within_budgets(config, plan, device, training, budget_s):
            return n
    return None


def plan_last_blocks(ctx: RoundContext, n: int) -> dict[DeviceId, TrainingPlan]:
    """Every selected device trains the last `n` blocks and the head (all of the model
    when `n` is every block) if its memory holds that; the rest sit out."""
    plans = {}
    for device in ctx.devices:
        plan = last_blocks_plan(device, ctx.training, ctx.model.groups, n)
        if within_budgets(ctx.model.config, plan, device, ctx.training, budget_s=None):
            plans[device.device_id] = plan
    return plans


WIDTH_LEVELS = (1.0, 0.5, 0.25, 0.125, 0.0625)  # HeteroFL's levels a..e


class WidthParams(PolicyParams):
    """A width method's parameters: the widths a device may train at."""

    widths: tuple[Annotated[float, Field(gt=0, le=1)], ...] = Field(default=WIDTH_LEVELS,
                                                                     min_length=1)


def largest_width(config: Any, device: DeviceState, training: TrainingDefaults,
                  widths: Sequence[float]) -> float | None:
    """The largest of `widths` at which the device's memory holds training the whole
    model, its residual sliced too with `training.slice_residual` (which heads, units
    and channels does not change the cost); None if none does."""
    groups = tuple(layer_groups(config.n_layer))
    for width in sorted(widths, reverse=True):
        part = first_slice(config, width, training.slice_residual)
        plan = make_plan(device, training, groups, slices=uniform(config, part))
        if predict_peak_bytes(config, plan, training.seq_len) <= device.memory_bytes:
            return width
    return None


Channels = Callable[[DeviceState, float], tuple[int, ...]]


def width_plans(ctx: RoundContext, widths: Sequence[float],
                choose: Callable[[DeviceState, int, float], Slice],
                channels: Channels | None = None) -> dict[DeviceId, TrainingPlan]:
    """Every selected device trains the whole model at the largest of `widths` its memory
    holds, keeping in block b the heads and units `choose(device, b, width)` picks (in
    device order, so a seeded choice is reproducible); a device holding none sits out.
    With `ctx.training.slice_residual`, every block also keeps the residual channels
    `channels(device, width)` picks (default: the first), asked once per device before
    its blocks."""
    config, plans = ctx.model.config, {}
    pick = channels or (lambda device, width: first_ids(width, config.n_embd))
    for device in ctx.devices:
        width = largest_width(config, device, ctx.training, widths)
        if width is None:
            continue
        kept = pick(device, width) if ctx.training.slice_residual and width < 1 else ()
        slices = tuple((block_group(b), choose(device, b, width))
                       for b in range(config.n_layer)) if width < 1 else ()
        if kept:
            slices = with_residual(slices, residual_part(kept, config.n_embd))
        plans[device.device_id] = make_plan(device, ctx.training, ctx.model.groups,
                                            slices=slices)
    return plans
