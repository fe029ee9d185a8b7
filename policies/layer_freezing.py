"""The simple layer-freezing baselines: every device trains the same final layers.

`head_only` trains the output head; `last_k` the last `k` blocks and the head. A device
whose memory cannot hold that plan sits the round out. Layer-wise averaging.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field

from fleetsim.policy import Policy, PolicyParams, plan_last_blocks
from fleetsim.types import (
    DeviceId,
    RoundContext,
    TrainingPlan,
)
from policies import register


@register
class LastK(Policy):
    name = "last_k"

    class Params(PolicyParams):
        k: int = Field(default=2, ge=0)  # blocks trained before the head

    params: Params

    def plan_round(self, ctx: RoundContext) -> Mapping[DeviceId, TrainingPlan]:
        return plan_last_blocks(ctx, min(self.params.k, ctx.model.n_layer))


@register
class HeadOnly(Policy):
    name = "head_only"

    def plan_round(self, ctx: RoundContext) -> Mapping[DeviceId, TrainingPlan]:
        return plan_last_blocks(ctx, 0)
