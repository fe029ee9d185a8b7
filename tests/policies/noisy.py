"""Test policy: FedAvg whose server step is noise of the same size as the real update."""
import numpy as np

from fleetsim.policy import Policy, plan_last_blocks
from fleetsim.runtime.aggregate import masked_mean


class Noisy(Policy):
    name = "noisy"

    def plan_round(self, ctx):
        return plan_last_blocks(ctx, ctx.model.n_layer)

    def aggregate(self, ctx, state, updates):
        mean, rng = masked_mean(state, updates), np.random.default_rng(ctx.round)
        out = {}
        for k in state:
            noise = rng.standard_normal(state[k].shape).astype(state[k].dtype)
            size = np.linalg.norm(mean[k] - state[k]) / max(np.linalg.norm(noise), 1e-12)
            out[k] = state[k] + size * noise
        return out
