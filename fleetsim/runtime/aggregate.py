"""Aggregation as one masked, weighted mean.

Each element of each global tensor becomes the weighted mean of the updates that hold it;
elements nobody trained keep their value. FedAvg, layer-wise averaging (CAFF) and
HeteroFL-style sub-model averaging are all this one function. Asynchronous mode
(FedBuff) rebases each update onto the newest version first, weighted by its staleness.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from fleetsim.config.scenario import StalenessConfig
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


def staleness_weight(config: StalenessConfig, staleness: int) -> float:
    """FedBuff's s(tau): how much an update `staleness` server steps old counts."""
    if config.kind == "polynomial":
        return float((1 + staleness) ** -config.a)
    if config.kind == "hinge":
        return 1.0 if staleness <= config.b else 1 / (config.a * (staleness - config.b) + 1)
    return 1.0


def rebased(update: Update, start: ModelState, now: ModelState, factor: float) -> Update:
    """An update trained from the `start` version as one on the `now` version: its delta
    times `factor` (staleness weight x server learning rate) added to `now`. The masked
    mean of rebased updates is FedBuff's step, each element averaged over the updates
    that hold it; with no staleness and factor 1 it is the update itself."""
    if start is now and factor == 1.0:
        return update
    tensors = {}
    for name, tensor in update.tensors.items():
        where = update.index.get(name, ...)
        base = np.asarray(now[name][where], np.float64)
        delta = np.asarray(tensor, np.float64) - np.asarray(start[name][where], np.float64)
        tensors[name] = (base + factor * delta).astype(tensor.dtype)
    return replace(update, tensors=tensors)
