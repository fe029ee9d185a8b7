"""Federated Dropout (Caldas et al., 2018): each device trains a random floor(s * C) of
the heads and of the FFN units of every block, drawn per device, round and block; s is
the largest of the width levels its memory holds. With the scenario's
model.slice_residual, a random floor(s * d) of the residual channels too, drawn per
device and round (the residual stream is one for every block). Masked mean on the
server, which evaluates the full model."""

from __future__ import annotations

from collections.abc import Mapping

from fleetsim.device.submodel import random_ids, random_slice
from fleetsim.policy import Policy, WidthParams, width_plans
from fleetsim.types import (
    DeviceId,
    RoundContext,
    TrainingPlan,
)
from policies import register


@register
class FederatedDropout(Policy):
    name = "feddropout"

    Params = WidthParams
    params: WidthParams

    def plan_round(self, ctx: RoundContext) -> Mapping[DeviceId, TrainingPlan]:
        config = ctx.model.config  # the round's seeded generator, drawn in device order
        return width_plans(ctx, self.params.widths,
                           lambda device, block, w: random_slice(config, w, ctx.rng),
                           lambda device, w: random_ids(w, config.n_embd, ctx.rng))
