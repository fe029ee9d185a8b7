"""HeteroFL (Diao et al., 2021): each device trains the sub-model of the first
floor(s * C) heads and FFN units of every block (and, with the scenario's
model.slice_residual, the first floor(s * d) residual channels), s the largest of the
width levels its memory holds; the server averages each element over the devices that
hold it and evaluates the largest width present in the fleet."""

from __future__ import annotations

from collections.abc import Mapping

from fleetsim.device.submodel import first_slice, uniform
from fleetsim.policy import Policy, WidthParams, largest_width, width_plans
from fleetsim.types import (
    DeviceId,
    ModelChoice,
    RoundContext,
    SetupContext,
    Slices,
    TrainingPlan,
)
from fleetsim.zoo.model import ZOO
from policies import register


@register
class HeteroFL(Policy):
    name = "heterofl"

    Params = WidthParams
    params: WidthParams

    def __init__(self, params: WidthParams | None = None) -> None:
        super().__init__(params)
        self.evaluated: Slices = ()

    def setup(self, ctx: SetupContext) -> ModelChoice:
        config = ZOO[ctx.model_name].config
        present = [largest_width(config, d, ctx.training, self.params.widths) for d in ctx.devices]
        widest = max((w for w in present if w is not None), default=1.0)
        self.evaluated = uniform(config, first_slice(config, widest,
                                                     ctx.training.slice_residual))
        return ModelChoice(ctx.model_name)

    def plan_round(self, ctx: RoundContext) -> Mapping[DeviceId, TrainingPlan]:
        config = ctx.model.config
        return width_plans(ctx, self.params.widths, lambda device, block, w: first_slice(config, w))

    def evaluated_slices(self, r: int) -> Slices:
        return self.evaluated
