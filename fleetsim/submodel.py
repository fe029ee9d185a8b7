"""Width-reduced sub-models: which heads and FFN units a device keeps, and where its
tensors sit in the global ones.

A block keeps floor(s * C) of its C heads and of its C FFN units (at least one), chosen
by index: the first ones (HeteroFL, SLT), a random set (Federated Dropout) or a rolling
window (FedRolex). The residual width, the LayerNorms, the embeddings and the output
layer stay whole. The same index maps slice the global tensors on the device and place
the trained tensors back in the server's masked mean.
"""

from __future__ import annotations

import numpy as np

from fleetsim.model import TinyGPTConfig
from fleetsim.types import Slice, Slices

Index = tuple[np.ndarray | slice, ...]


def kept(width: float, total: int) -> int:
    """How many of `total` heads or units a block at `width` keeps."""
    return max(1, min(total, int(width * total)))


def first_slice(config: TinyGPTConfig, width: float) -> Slice:
    return Slice(tuple(range(kept(width, config.n_head))),
                 tuple(range(kept(width, config.ffn_size))))


def rolling_slice(config: TinyGPTConfig, width: float, offset: int) -> Slice:
    """A window of the kept size starting at `offset`, wrapping around."""
    def window(total: int) -> tuple[int, ...]:
        return tuple(sorted((offset + i) % total for i in range(kept(width, total))))

    return Slice(window(config.n_head), window(config.ffn_size))


def random_slice(config: TinyGPTConfig, width: float, rng: np.random.Generator) -> Slice:
    def draw(total: int) -> tuple[int, ...]:
        return tuple(int(i) for i in np.sort(rng.choice(total, kept(width, total), False)))

    return Slice(draw(config.n_head), draw(config.ffn_size))


def uniform(config: TinyGPTConfig, part: Slice) -> Slices:
    """Every block keeps `part` (a slice of the whole model); nothing if it is all."""
    if len(part.heads) == config.n_head and len(part.units) == config.ffn_size:
        return ()
    return tuple((f"block.{b}", part) for b in range(config.n_layer))


def shape_of(slices: Slices) -> Slices:
    """The same shape with the first indices: what sizes and costs depend on."""
    return tuple((g, Slice(tuple(range(len(p.heads))), tuple(range(len(p.units)))))
                 for g, p in slices)


def slice_index(name: str, slices: Slices, head_size: int) -> Index | None:
    """Where a sub-model's tensor `name` (a state-dict key) sits in the global tensor:
    an index tuple (integer arrays and whole-axis slices); None for the whole tensor."""
    parts = name.split(".")
    part = dict(slices).get(f"block.{parts[1]}") if parts[0] == "blocks" else None
    if part is None or len(parts) < 5:
        return None
    module, kind = parts[3], parts[4]
    rows = np.concatenate([np.arange(h * head_size, (h + 1) * head_size) for h in part.heads])
    units = np.asarray(part.units)
    everything = slice(None)
    if module in ("q_proj", "k_proj", "v_proj"):  # (heads * head_size, d) and its bias
        return (rows,) if kind == "bias" else (rows, everything)
    if module == "fc_in":  # (units, d) and its bias
        return (units,) if kind == "bias" else (units, everything)
    if module in ("o_proj", "fc_out") and kind == "weight":  # (d, inputs): columns
        return (everything, rows if module == "o_proj" else units)
    return None  # output biases and LayerNorms live in the residual width: whole
