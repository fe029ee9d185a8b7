"""A test policy with state across rounds: every third plan trains only the last block,
the others the last two; it counts the plans it made (`state_dict`), so a resume that
forgot the count would plan differently."""

from __future__ import annotations

from fleetsim.policy import plan_last_blocks
from fleetsim.runtime.aggregate import masked_mean


class Alternating:
    name = "alternating"

    def __init__(self) -> None:
        self.planned = 0

    def setup(self, ctx):  # type: ignore[no-untyped-def]
        from fleetsim.types import ModelChoice

        return ModelChoice(ctx.model_name)

    def plan_round(self, ctx):  # type: ignore[no-untyped-def]
        self.planned += 1
        return plan_last_blocks(ctx, 1 if self.planned % 3 == 0 else 2)

    def aggregate(self, ctx, state, updates):  # type: ignore[no-untyped-def]
        return masked_mean(state, updates)

    def state_dict(self):  # type: ignore[no-untyped-def]
        return {"planned": self.planned}

    def load_state_dict(self, state):  # type: ignore[no-untyped-def]
        self.planned = state["planned"]
