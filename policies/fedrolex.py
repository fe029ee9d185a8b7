"""FedRolex (Alam et al., 2022): each device trains a rolling window of floor(s * C)
heads and FFN units of every block, s the largest of the width levels its memory holds;
the window starts at unit r in round r (wrapping around) and is the same for every
device. With the scenario's model.slice_residual, the residual channels roll the same
way (one window for every block). Masked mean on the server, which evaluates the full
model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fleetsim.aggregate import masked_mean
from fleetsim.policy import WIDTH_LEVELS, width_levels, width_plans
from fleetsim.submodel import rolling_ids, rolling_slice
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
class FedRolex:
    name = "fedrolex"

    def __init__(self, widths: Sequence[float] = WIDTH_LEVELS) -> None:
        self.widths = width_levels(self.name, widths)

    def setup(self, ctx: SetupContext) -> ModelChoice:
        return ModelChoice(ctx.model_name)

    def plan_round(self, ctx: RoundContext) -> Mapping[DeviceId, TrainingPlan]:
        config = ctx.model.config
        return width_plans(ctx, self.widths,
                           lambda device, block, w: rolling_slice(config, w, ctx.round),
                           lambda device, w: rolling_ids(w, config.n_embd, ctx.round))

    def aggregate(self, ctx: RoundContext, state: ModelState,
                  updates: Sequence[Update]) -> ModelState:
        return masked_mean(state, updates)
