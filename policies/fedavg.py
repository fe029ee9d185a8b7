"""FedAvg with full finetuning: every selected device trains every layer.

A device whose predicted peak memory exceeds its current budget sits the round out.
Updates are averaged weighted by examples (McMahan et al., 2017).
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
class FedAvg:
    name = "fedavg"

    def setup(self, ctx: SetupContext) -> ModelChoice:
        return ModelChoice(model_name=ctx.model_name)

    def plan_round(self, ctx: RoundContext) -> Mapping[DeviceId, TrainingPlan]:
        return plan_last_blocks(ctx, ctx.model.n_layer)  # every block: full finetuning

    def aggregate(self, ctx: RoundContext, state: ModelState,
                  updates: Sequence[Update]) -> ModelState:
        return masked_mean(state, updates)
