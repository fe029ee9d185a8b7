"""FedRolex (Alam et al., 2022): each device trains a rolling window of floor(s * C)
heads and FFN units of every block, s the largest of the width levels its memory holds;
the window starts at unit r in round r (wrapping around) and is the same for every
device. With the scenario's model.slice_residual, the residual channels roll the same
way (one window for every block). Masked mean on the server, which evaluates the full
model."""

from __future__ import annotations

from collections.abc import Mapping

from fleetsim.device.submodel import rolling_ids, rolling_slice
from fleetsim.policy import Policy, WidthParams, width_plans
from fleetsim.types import (
    DeviceId,
    RoundContext,
    TrainingPlan,
)
from policies import register


@register
class FedRolex(Policy):
    name = "fedrolex"

    Params = WidthParams
    params: WidthParams

    def plan_round(self, ctx: RoundContext) -> Mapping[DeviceId, TrainingPlan]:
        config = ctx.model.config
        return width_plans(ctx, self.params.widths,
                           lambda device, block, w: rolling_slice(config, w, ctx.round),
                           lambda device, w: rolling_ids(w, config.n_embd, ctx.round))
