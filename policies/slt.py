"""Successive layer training (SLT; Pfeiffer, Khalili, Henkel, NeurIPS 2023).

A configuration (s, tau, d): blocks 0..tau-1 keep full width, the last d of them train
and the rest are frozen (the embeddings train only when every block does); blocks
tau..N-1 and the output layer form a head whose blocks keep the first floor(s * C) heads
and FFN units, trained end to end. Offline, from the cost model and the weakest device's
memory, a table of (s, tau) with s non-decreasing in tau; over the rounds, a schedule
that fills the network block by block: stage 0 trains all of it at width s_1 for
floor(s_1 * R) rounds, each later step lasts in proportion to its trainable parameters,
the last runs to round R. Stronger devices keep the head and train more full-width
blocks (a larger d). The server evaluates the current configuration.

The width s is a fraction of each block's heads and FFN units: a zoo model has few
heads (4 in gpt-4x128), so several s keep the same heads and differ in units only.
With the scenario's model.slice_residual (TrainingDefaults.slice_residual), the narrow
blocks and the head also keep the first floor(s * d) residual channels, as the
reference code narrows every channel: the full-width stream is cut where it meets the
first narrow block, and the embeddings are narrow in stage 0 only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fleetsim.device.cost import predict_peak_bytes, upload_bytes
from fleetsim.device.submodel import first_slice
from fleetsim.policy import Policy, PolicyParams, make_plan
from fleetsim.types import (
    DeviceId,
    DeviceState,
    ModelChoice,
    RoundContext,
    SetupContext,
    Slices,
    TrainingDefaults,
    TrainingPlan,
)
from fleetsim.zoo.model import EMBED, ZOO, TinyGPTConfig, block_group, layer_groups
from policies import register

STEPS = 1000  # s is searched on a grid of 1 / STEPS, as the reference does (0.001)


@dataclass(frozen=True)
class Stage:
    """One step of the schedule: rounds [start, end) train configuration (width, full)."""

    width: float  # s: the width of blocks full..N-1
    full: int  # tau: full-width blocks before them
    start: int
    end: int


def stage_plan(config: TinyGPTConfig, device: DeviceState, training: TrainingDefaults,
               width: float, full: int, depth: int) -> TrainingPlan:
    """Configuration (width, full, depth) as a plan for one device."""
    frozen_blocks = full - min(depth, full)
    frozen = (EMBED, *(block_group(b) for b in range(frozen_blocks))) if frozen_blocks else ()
    train = tuple(g for g in layer_groups(config.n_layer) if g not in frozen)
    slices = head_slices(config, width, full, training.slice_residual)
    return make_plan(device, training, train, frozen, slices=slices)


def head_slices(config: TinyGPTConfig, width: float, full: int, residual: bool = False
                ) -> Slices:
    """Blocks full..N-1 at `width` (first heads and units, and with `residual` first
    residual channels); nothing at width 1."""
    if width >= 1:
        return ()
    part = first_slice(config, width, residual)
    return tuple((block_group(b), part) for b in range(full, config.n_layer))


def configuration_table(config: TinyGPTConfig, weakest: DeviceState,
                        training: TrainingDefaults) -> list[tuple[float, int]]:
    """(s, tau) for tau = 1..N-1 with d = 1: for tau from N-1 down, the largest s (on the
    1/STEPS grid, at most the previous s) whose plan fits the weakest device; so s never
    decreases as tau grows. A tau at which nothing fits is left out. Kept up to the
    first configuration with s = 1."""
    table, ceiling = [], STEPS
    for full in range(config.n_layer - 1, 0, -1):
        k = widest_fit(config, weakest, training, full, ceiling)
        if k is not None:
            table.append((k / STEPS, full))
            ceiling = k
    table.reverse()
    ends = [i for i, (s, _) in enumerate(table) if s >= 1]
    return table[:ends[0] + 1] if ends else table


def widest_fit(config: TinyGPTConfig, device: DeviceState, training: TrainingDefaults,
               full: int, ceiling: int = STEPS) -> int | None:
    """The largest k <= ceiling such that configuration (k / STEPS, full, d=1) fits the
    device; None if not even k = 1 does. Memory grows with s, so this bisection finds
    what the reference's walk down in steps of 0.001 finds."""
    def fits(k: int) -> bool:
        plan = stage_plan(config, device, training, k / STEPS, full, depth=1)
        return predict_peak_bytes(config, plan, training.seq_len) <= device.memory_bytes

    if not fits(1):
        return None
    low, high = 1, ceiling  # fits(low) holds
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


def schedule(config: TinyGPTConfig, table: Sequence[tuple[float, int]], rounds: int,
             weakest: DeviceState, training: TrainingDefaults) -> list[Stage]:
    """Stage 0 (the whole network at s_1) for floor(s_1 * R) rounds, then each
    configuration for a share of the remaining rounds proportional to its trainable
    parameters, the last one to round R. Stages that get no rounds are dropped.

    In a Transformer every block saves residual-width activations however narrow it is,
    so the whole network at s_1 can need more memory than one full-width block and a
    narrow head; stage 0 then runs at the widest s <= s_1 that fits."""
    first = int(round(table[0][0] * STEPS))
    stage0_width = (widest_fit(config, weakest, training, 0, first) or 1) / STEPS
    configs = [(stage0_width, 0), *table]
    params = np.array([upload_bytes(config, stage_plan(config, weakest, training, s, full, 1))
                       for s, full in table], dtype=float)
    stage0 = int(table[0][0] * rounds)
    shares = np.cumsum(params / params.max())
    ends = [stage0, *(stage0 + int(f * (rounds - stage0)) for f in shares / shares[-1])]
    starts = [0, *ends[:-1]]
    return [Stage(s, full, a, b) for (s, full), a, b in zip(configs, starts, ends, strict=True)
            if b > a]


@register
class SLT(Policy):
    name = "slt"

    def __init__(self, params: PolicyParams | None = None) -> None:
        super().__init__(params)
        self.stages: list[Stage] = []
        self.config: TinyGPTConfig | None = None
        self.slice_residual = False

    def setup(self, ctx: SetupContext) -> ModelChoice:
        self.config = config = ZOO[ctx.model_name].config
        self.slice_residual = ctx.training.slice_residual
        # the weakest device that can take part at all fixes the configurations; one
        # that cannot train even the narrowest whole network sits out every round
        able = [d for d in ctx.devices if widest_fit(config, d, ctx.training, 0, 1)]
        if not able:
            return ModelChoice(ctx.model_name)
        weakest = min(able, key=lambda d: d.memory_bytes)
        table = configuration_table(config, weakest, ctx.training)
        if table:
            self.stages = schedule(config, table, ctx.total_rounds, weakest, ctx.training)
        else:  # no full-width block fits: the whole network at the widest s that does
            k = widest_fit(config, weakest, ctx.training, full=0)
            self.stages = [Stage(k / STEPS, 0, 0, ctx.total_rounds)] if k else []
        return ModelChoice(ctx.model_name)

    def stage(self, r: int) -> Stage | None:
        """The stage round r trains (round -1: the first)."""
        return next((s for s in self.stages if s.start <= max(r, 0) < s.end), None)

    def plan_round(self, ctx: RoundContext) -> Mapping[DeviceId, TrainingPlan]:
        """Each device trains the current configuration with the most full-width blocks
        (d) its memory holds; one that holds not even d = 1 sits out."""
        stage, config = self.stage(ctx.round), ctx.model.config
        plans: dict[DeviceId, TrainingPlan] = {}
        if stage is None:
            return plans
        for device in ctx.devices:
            for depth in range(max(stage.full, 1), 0, -1):
                plan = stage_plan(config, device, ctx.training, stage.width, stage.full, depth)
                if predict_peak_bytes(config, plan, ctx.training.seq_len) \
                        <= device.memory_bytes:
                    plans[device.device_id] = plan
                    break
        return plans

    def evaluated_slices(self, r: int) -> Slices:
        stage = self.stage(r)
        if stage is None or self.config is None:
            return ()
        return head_slices(self.config, stage.width, stage.full, self.slice_residual)

