"""FedAvg with full finetuning: every selected device trains every layer.

A device whose predicted peak memory exceeds its current budget sits the round out.
Updates are averaged weighted by examples (McMahan et al., 2017).
"""

from __future__ import annotations

from collections.abc import Mapping

from fleetsim.policy import Policy, plan_last_blocks
from fleetsim.types import (
    DeviceId,
    RoundContext,
    TrainingPlan,
)
from policies import register


@register
class FedAvg(Policy):
    name = "fedavg"

    def plan_round(self, ctx: RoundContext) -> Mapping[DeviceId, TrainingPlan]:
        return plan_last_blocks(ctx, ctx.model.n_layer)  # every block: full finetuning
