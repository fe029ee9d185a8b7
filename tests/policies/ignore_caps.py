"""A test policy that ignores memory caps: every selected device trains everything."""

from __future__ import annotations

from fleetsim.policy import make_plan
from fleetsim.runtime.aggregate import masked_mean


class IgnoreCaps:
    name = "ignore_caps"

    def setup(self, ctx):  # type: ignore[no-untyped-def]
        from fleetsim.types import ModelChoice

        return ModelChoice(ctx.model_name)

    def plan_round(self, ctx):  # type: ignore[no-untyped-def]
        return {d.device_id: make_plan(d, ctx.training, train=ctx.model.groups)
                for d in ctx.devices}

    def aggregate(self, ctx, state, updates):  # type: ignore[no-untyped-def]
        return masked_mean(state, updates)
