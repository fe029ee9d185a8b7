"""The simple layer-freezing baselines: every device trains the same final layers.

`head_only` trains the output head; `last_k` the last `k` blocks and the head. A device
whose memory cannot hold that plan sits the round out. Layer-wise averaging.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fleetsim.aggregate import masked_mean
from fleetsim.policy import plan_last_blocks
from fleetsim.types import (
    DeviceId,
    ModelChoice,
    ModelState,
    RoundContext,
    SetupContext,
    TrainingPlan,
    Update,
)
from policies import register


@register
class LastK:
    name = "last_k"

    def __init__(self, k: int = 2) -> None:
        if k < 0:
            raise ValueError(f"last_k: k must be >= 0, not {k}")
        self.k = k

    def setup(self, ctx: SetupContext) -> ModelChoice:
        return ModelChoice(ctx.model_name)

    def plan_round(self, ctx: RoundContext) -> Mapping[DeviceId, TrainingPlan]:
        return plan_last_blocks(ctx, min(self.k, ctx.model.n_layer))

    def aggregate(self, ctx: RoundContext, state: ModelState,
                  updates: Sequence[Update]) -> ModelState:
        return masked_mean(state, updates)


@register
class HeadOnly:
    name = "head_only"

    def setup(self, ctx: SetupContext) -> ModelChoice:
        return ModelChoice(ctx.model_name)

    def plan_round(self, ctx: RoundContext) -> Mapping[DeviceId, TrainingPlan]:
        return plan_last_blocks(ctx, 0)

    def aggregate(self, ctx: RoundContext, state: ModelState,
                  updates: Sequence[Update]) -> ModelState:
        return masked_mean(state, updates)
