"""Width-reduced sub-models: which heads, FFN units and residual channels a device
keeps, and where its tensors sit in the global ones.

A block keeps floor(s * C) of its C heads and of its C FFN units (at least one), chosen
by index: the first ones (HeteroFL, SLT), a random set (Federated Dropout) or a rolling
window (FedRolex). By default the residual width, hence the LayerNorms, the embeddings
and the output layer, stays whole. With residual slicing (`Slice.residual`, the
scenario's `model.slice_residual`) a block also keeps floor(s * d) of the d residual
channels, chosen by the method's own scheme; the embeddings take the first block's
channels and the head the last block's, and a full-width stream meeting a narrow block
is cut to its first channels (SLT's slicing shortcut). The same index maps slice the
global tensors on the device and place the trained tensors back in the server's masked
mean.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fleetsim.types import Slice, Slices
from fleetsim.zoo.model import TinyGPTConfig, block_group

Index = tuple[np.ndarray | slice, ...]


def kept(width: float, total: int) -> int:
    """How many of `total` heads, units or channels a block at `width` keeps."""
    return max(1, min(total, int(width * total)))


def first_ids(width: float, total: int) -> tuple[int, ...]:
    return tuple(range(kept(width, total)))


def rolling_ids(width: float, total: int, offset: int) -> tuple[int, ...]:
    """A window of the kept size starting at `offset`, wrapping around (sorted)."""
    return tuple(sorted((offset + i) % total for i in range(kept(width, total))))


def random_ids(width: float, total: int, rng: np.random.Generator) -> tuple[int, ...]:
    return tuple(int(i) for i in np.sort(rng.choice(total, kept(width, total), False)))


def residual_part(ids: tuple[int, ...], total: int) -> tuple[int, ...]:
    """`Slice.residual` for kept channels `ids`: empty when they are all of them."""
    return () if len(ids) == total else ids


def first_slice(config: TinyGPTConfig, width: float, residual: bool = False) -> Slice:
    """The first heads and units (and, with `residual`, the first residual channels)."""
    channels = residual_part(first_ids(width, config.n_embd), config.n_embd) if residual else ()
    return Slice(first_ids(width, config.n_head), first_ids(width, config.ffn_size), channels)


def rolling_slice(config: TinyGPTConfig, width: float, offset: int) -> Slice:
    return Slice(rolling_ids(width, config.n_head, offset),
                 rolling_ids(width, config.ffn_size, offset))


def random_slice(config: TinyGPTConfig, width: float, rng: np.random.Generator) -> Slice:
    return Slice(random_ids(width, config.n_head, rng), random_ids(width, config.ffn_size, rng))


def uniform(config: TinyGPTConfig, part: Slice) -> Slices:
    """Every block keeps `part` (a slice of the whole model); nothing if it is all."""
    if len(part.heads) == config.n_head and len(part.units) == config.ffn_size \
            and not part.residual:
        return ()
    return tuple((block_group(b), part) for b in range(config.n_layer))


def with_residual(slices: Slices, channels: tuple[int, ...]) -> Slices:
    """Every sliced block also keeps residual `channels` (empty: the whole residual)."""
    return tuple((g, replace(p, residual=channels)) for g, p in slices)


def shape_of(slices: Slices) -> Slices:
    """The same shape with the first indices: what sizes and costs depend on."""
    return tuple((g, Slice(*(tuple(range(len(ids))) for ids in (p.heads, p.units, p.residual))))
                 for g, p in slices)


def block_channels(slices: Slices, config: TinyGPTConfig) -> list[np.ndarray | None]:
    """Per block, the residual channels it keeps (None: all of them)."""
    parts = dict(slices)
    channels: list[np.ndarray | None] = []
    for b in range(config.n_layer):
        part = parts.get(block_group(b))
        channels.append(np.asarray(part.residual) if part and part.residual else None)
    return channels


def residual_problem(slices: Slices, config: TinyGPTConfig) -> str:
    """Why the plan's residual channels cannot be run ("" if they can): each block's
    must be sorted, distinct, below n_embd, and the first ones of the previous
    block's (the stream can only be cut, never widened or reordered). The embeddings
    take the first block's channels, whichever they are."""
    d, previous = config.n_embd, None
    for b, channels in enumerate(block_channels(slices, config)):
        ids = list(range(d)) if channels is None else channels.tolist()
        if ids != sorted(set(ids)) or ids[0] < 0 or ids[-1] >= d:
            return f"slices block.{b}'s residual with bad indices (sorted, distinct, < {d})"
        if previous is not None and ids != previous[:len(ids)]:
            return f"widens or reorders the residual at block.{b} (it can only be cut)"
        previous = ids
    return ""


def _index(*axes: np.ndarray | None) -> Index | None:
    """An index over the given axes (None: the whole axis); two arrays: their outer
    product. None when every axis is whole."""
    if all(a is None for a in axes):
        return None
    if all(a is not None for a in axes) and len(axes) == 2:
        return tuple(np.ix_(*axes))  # type: ignore[arg-type]
    return tuple(slice(None) if a is None else a for a in axes)


def slice_index(name: str, slices: Slices, config: TinyGPTConfig) -> Index | None:
    """Where a sub-model's tensor `name` (a state-dict key) sits in the global tensor:
    an index tuple (integer arrays and whole-axis slices); None for the whole tensor.
    `config` is the global model's or the sub-model's (head size and depth agree)."""
    parts = name.split(".")
    if not slices:
        return None
    channels = block_channels(slices, config)
    if parts[0] in ("wte", "wpe", "lm_head"):  # (rows, d): the embedding or head columns
        return _index(None, channels[0 if parts[0] != "lm_head" else -1])
    if parts[0] == "ln_f":
        return _index(channels[-1])
    part = dict(slices).get(block_group(int(parts[1])))
    if part is None:
        return None
    res = channels[int(parts[1])]
    if parts[2] in ("ln1", "ln2"):
        return _index(res)
    module, kind = parts[3], parts[4]
    size = config.head_size
    rows = np.concatenate([np.arange(h * size, (h + 1) * size) for h in part.heads])
    units = np.asarray(part.units)
    if module in ("q_proj", "k_proj", "v_proj"):  # (heads * head_size, d) and its bias
        return _index(rows) if kind == "bias" else _index(rows, res)
    if module == "fc_in":  # (units, d) and its bias
        return _index(units) if kind == "bias" else _index(units, res)
    # o_proj and fc_out: (d, inputs) and a d-wide bias
    return _index(res) if kind == "bias" else _index(res, rows if module == "o_proj" else units)
