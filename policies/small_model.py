"""The small-model baseline: every device trains, end to end, the largest zoo model that
the weakest device of the fleet can train (chosen once, from memory alone), among the
zoo's pretrained family (fleetsim.zoo.model.ARCHITECTURES)."""

from __future__ import annotations

from collections.abc import Mapping

from fleetsim.device.cost import group_param_counts, predict_peak_bytes
from fleetsim.policy import Policy, make_plan, plan_last_blocks
from fleetsim.types import (
    DeviceId,
    ModelChoice,
    RoundContext,
    SetupContext,
    TrainingPlan,
)
from fleetsim.zoo.model import ARCHITECTURES, ZOO, layer_groups
from policies import register


@register
class SmallModel(Policy):
    name = "small_model"

    def setup(self, ctx: SetupContext) -> ModelChoice:
        weakest = min(ctx.devices, key=lambda d: d.memory_bytes)
        by_size = sorted(ARCHITECTURES,
                         key=lambda n: sum(group_param_counts(ZOO[n].config).values()))
        chosen = by_size[0]  # the smallest, if nothing fits: its devices will sit out
        for name in by_size:
            config = ZOO[name].config
            plan = make_plan(weakest, ctx.training, train=tuple(layer_groups(config.n_layer)))
            if predict_peak_bytes(config, plan, ctx.training.seq_len) <= weakest.memory_bytes:
                chosen = name
        return ModelChoice(chosen)

    def plan_round(self, ctx: RoundContext) -> Mapping[DeviceId, TrainingPlan]:
        return plan_last_blocks(ctx, ctx.model.n_layer)  # every block: full finetuning
