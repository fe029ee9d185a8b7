"""Test policy: FedAvg whose server step goes the wrong way (a flipped update sign)."""
from fleetsim.policy import Policy, plan_last_blocks
from fleetsim.runtime.aggregate import masked_mean


class Flipped(Policy):
    name = "flipped"

    def plan_round(self, ctx):
        return plan_last_blocks(ctx, ctx.model.n_layer)

    def aggregate(self, ctx, state, updates):
        mean = masked_mean(state, updates)
        return {k: state[k] - (mean[k] - state[k]) for k in state}
