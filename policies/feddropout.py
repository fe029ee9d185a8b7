"""Federated Dropout (Caldas et al., 2018): each device trains a random floor(s * C) of
the heads and of the FFN units of every block, drawn per device, round and block; s is
the largest of the width levels its memory holds. With the scenario's
model.slice_residual, a random floor(s * d) of the residual channels too, drawn per
device and round (the residual stream is one for every block). Masked mean on the
server, which evaluates the full model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fleetsim.aggregate import masked_mean
from fleetsim.policy import WIDTH_LEVELS, width_levels, width_plans
from fleetsim.submodel import random_ids, random_slice
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
class FederatedDropout:
    name = "feddropout"

    def __init__(self, widths: Sequence[float] = WIDTH_LEVELS) -> None:
        self.widths = width_levels(self.name, widths)

    def setup(self, ctx: SetupContext) -> ModelChoice:
        return ModelChoice(ctx.model_name)

    def plan_round(self, ctx: RoundContext) -> Mapping[DeviceId, TrainingPlan]:
        config = ctx.model.config  # the round's seeded generator, drawn in device order
        return width_plans(ctx, self.widths,
                           lambda device, block, w: random_slice(config, w, ctx.rng),
                           lambda device, w: random_ids(w, config.n_embd, ctx.rng))

    def aggregate(self, ctx: RoundContext, state: ModelState,
                  updates: Sequence[Update]) -> ModelState:
        return masked_mean(state, updates)
