"""LoRA adapters in the global state, and the mapping to a device's peft model.

The global model carries adapters of the largest rank R on the target layers of every
block, under canonical names: `<module>.lora_A.weight` (R, in) and
`<module>.lora_B.weight` (out, R). A device training rank r <= R holds the first r rows
of A and the first r columns of B; its update says so with index maps, so the server's
masked mean averages each adapter element over the devices that trained it. The scale
alpha / r is the same constant for every rank, so a device's low-rank delta and the
global model's agree.
"""

from __future__ import annotations

import math

import numpy as np

from fleetsim.types import LoraSpec
from fleetsim.zoo.model import TinyGPTConfig

_PEFT_PARTS = ((".base_layer.", "."), (".lora_A.default.", ".lora_A."),
               (".lora_B.default.", ".lora_B."))


def global_key(local_key: str) -> str:
    """A peft state-dict key under its global name (base weights keep the base name)."""
    for peft_part, plain in _PEFT_PARTS:
        local_key = local_key.replace(peft_part, plain)
    return local_key


def adapter_shapes(config: TinyGPTConfig, spec: LoraSpec) -> dict[str, tuple[int, int]]:
    """Global adapter tensors and their shapes at the spec's rank."""
    d, inner, ffn = config.n_embd, config.attn_size, config.ffn_size
    in_out = {"q_proj": (d, inner), "k_proj": (d, inner), "v_proj": (d, inner),
              "o_proj": (inner, d), "fc_in": (d, ffn), "fc_out": (ffn, d)}
    shapes = {}
    for block in range(config.n_layer):
        for target in spec.targets:
            where = "attn" if target.endswith("_proj") else "mlp"
            size_in, size_out = in_out[target]
            prefix = f"blocks.{block}.{where}.{target}"
            shapes[f"{prefix}.lora_A.weight"] = (spec.rank, size_in)
            shapes[f"{prefix}.lora_B.weight"] = (size_out, spec.rank)
    return shapes


def init_adapters(config: TinyGPTConfig, spec: LoraSpec, seed: int) -> dict[str, np.ndarray]:
    """peft's initialisation: A uniform in +-1/sqrt(in) (kaiming, a=sqrt(5)), B zero, so
    the adapted model starts as the pretrained one."""
    rng = np.random.default_rng(seed)
    adapters = {}
    for key, shape in adapter_shapes(config, spec).items():
        if ".lora_A." in key:
            bound = 1 / math.sqrt(shape[1])
            adapters[key] = rng.uniform(-bound, bound, shape).astype(np.float32)
        else:
            adapters[key] = np.zeros(shape, np.float32)
    return adapters


def adapter_index(key: str, rank: int) -> tuple[np.ndarray | slice, ...] | None:
    """Where a rank-`rank` device's adapter tensor sits in the global one: the first
    `rank` rows of A, the first `rank` columns of B (None: not an adapter)."""
    if ".lora_A." in key:
        return (np.arange(rank), slice(None))
    if ".lora_B." in key:
        return (slice(None), np.arange(rank))
    return None
