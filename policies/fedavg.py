"""FedAvg with full finetuning: every selected device trains every layer.

A device whose predicted peak memory exceeds its current budget sits the round out.
Updates are averaged weighted by examples (McMahan et al., 2017).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fleetsim.aggregate import masked_mean
from fleetsim.cost import predict_peak_bytes
from fleetsim.policy import make_plan
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
        plans = {}
        for device in ctx.devices:
            plan = make_plan(device, ctx.training, train=ctx.model.groups)
            if predict_peak_bytes(ctx.model.config, plan, ctx.training.seq_len) \
                    <= device.memory_bytes:
                plans[device.device_id] = plan
        return plans

    def aggregate(self, ctx: RoundContext, state: ModelState,
                  updates: Sequence[Update]) -> ModelState:
        return masked_mean(state, updates)
