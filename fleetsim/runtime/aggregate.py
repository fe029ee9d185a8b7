"""Aggregation as one masked, weighted mean.

Each element of each global tensor becomes the weighted mean of the updates that hold it;
elements nobody trained keep their value. FedAvg, layer-wise averaging (CAFF) and
HeteroFL-style sub-model averaging are all this one function.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fleetsim.types import ModelState, Update


def masked_mean(state: ModelState, updates: Sequence[Update]) -> dict[str, np.ndarray]:
    """Return a new state; `state` and `updates` are not mutated.

    Sums run in float64 in the order given (callers sort updates by device id), so the
    result does not depend on which worker finished first.
    """
    sums: dict[str, np.ndarray] = {}
    weights: dict[str, np.ndarray] = {}
    for update in updates:
        if update.weight <= 0:
            raise ValueError(f"update of device {update.device_id} has weight {update.weight}")
        for name, tensor in update.tensors.items():
            if name not in state:
                raise KeyError(f"update of device {update.device_id} names unknown tensor {name}")
            if name not in sums:
                sums[name] = np.zeros(state[name].shape, np.float64)
                weights[name] = np.zeros(state[name].shape, np.float64)
            where = update.index.get(name, ...)
            sums[name][where] += update.weight * np.asarray(tensor, np.float64)
            weights[name][where] += update.weight
    new_state = dict(state)
    for name, total in sums.items():
        held = weights[name] > 0
        mean = np.divide(total, weights[name], out=np.zeros_like(total), where=held)
        new_state[name] = np.where(held, mean, state[name]).astype(state[name].dtype)
    return new_state
