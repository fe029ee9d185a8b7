"""The model zoo: tiny decoder-only character Transformers with transformers conventions.

A `TinyGPTConfig` plus a `PreTrainedModel`, so `save_pretrained`/`from_pretrained` and
`peft` work. Blocks are pre-LayerNorm; attention keeps separate q/k/v/o projections and
the FFN two linears, so heads and hidden units can be sliced by sub-model policies (a
sub-model's config says how many heads and units each block keeps, and how wide each
block's residual is: the embeddings take the first block's width, the head the last's).
The output head is untied from the embeddings (CAFF trains the head without them).

Layer groups, in forward order: "embed" (token + position embeddings), "block.0" ..
"block.{L-1}", "head" (final LayerNorm + output projection).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput
from transformers.utils import logging as hf_logging

from fleetsim.types import Slices
from fleetsim.zoo.data import VOCAB_SIZE

hf_logging.disable_progress_bar()  # save/load bars would break the live view
hf_logging.set_verbosity_error()


class TinyGPTConfig(PretrainedConfig):
    model_type = "fleetsim-tinygpt"

    def __init__(
        self,
        vocab_size: int = VOCAB_SIZE,
        max_seq_len: int = 128,  # longest input the position table covers
        n_layer: int = 4,
        n_embd: int = 128,  # residual width of the whole model
        n_head: int = 4,
        head_size: int | None = None,  # default n_embd // n_head; fixed when heads are sliced
        ffn_size: int | None = None,  # FFN hidden units, default 4 * n_embd
        block_heads: list[int] | None = None,  # per block, for sub-models (default n_head)
        block_units: list[int] | None = None,  # per block, for sub-models (default ffn_size)
        block_residual: list[int] | None = None,  # per block, for sub-models (default n_embd)
        **kwargs: Any,
    ) -> None:
        if head_size is None and n_embd % n_head:
            raise ValueError(f"n_embd {n_embd} is not a multiple of n_head {n_head}")
        self.vocab_size, self.max_seq_len = vocab_size, max_seq_len
        self.n_layer, self.n_embd, self.n_head = n_layer, n_embd, n_head
        self.head_size = head_size or n_embd // n_head
        self.ffn_size = ffn_size or 4 * n_embd
        self.block_heads = block_heads or [self.n_head] * n_layer
        self.block_units = block_units or [self.ffn_size] * n_layer
        self.block_residual = block_residual or [n_embd] * n_layer
        if self.block_residual != sorted(self.block_residual, reverse=True):
            raise ValueError(f"residual widths {self.block_residual} widen: they can only narrow")
        super().__init__(**kwargs)

    @property
    def attn_size(self) -> int:
        """Width of q, k and v: heads x head size."""
        return self.n_head * self.head_size

    @property
    def embed_width(self) -> int:
        """Width of the token and position embeddings: the first block's residual."""
        return int(self.block_residual[0])

    @property
    def head_width(self) -> int:
        """Input width of the final LayerNorm and the output layer: the last block's."""
        return int(self.block_residual[-1])


def sub_config(config: TinyGPTConfig, slices: Slices) -> TinyGPTConfig:
    """The config of the sub-model that keeps `slices` of the named blocks."""
    if not slices:
        return config
    heads, units = list(config.block_heads), list(config.block_units)
    residual = list(config.block_residual)
    for group, part in slices:
        block = block_number(group)
        heads[block], units[block] = len(part.heads), len(part.units)
        residual[block] = len(part.residual) or residual[block]
    return TinyGPTConfig(
        vocab_size=config.vocab_size, max_seq_len=config.max_seq_len, n_layer=config.n_layer,
        n_embd=config.n_embd, n_head=config.n_head, head_size=config.head_size,
        ffn_size=config.ffn_size, block_heads=heads, block_units=units,
        block_residual=residual)


class Attention(nn.Module):
    """Causal multi-head self-attention, written out (no fused kernel) so that its FLOPs
    are counted and its saved activations are the same on every device and backend."""

    def __init__(self, cfg: TinyGPTConfig, block: int) -> None:
        super().__init__()
        d, inner = cfg.block_residual[block], cfg.block_heads[block] * cfg.head_size
        self.head_size = cfg.head_size
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d, inner) for _ in range(3))
        self.o_proj = nn.Linear(inner, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape  # (batch, time, residual width)

        def heads(proj: nn.Module) -> torch.Tensor:  # (b, heads, t, head_dim)
            return proj(x).view(b, t, -1, self.head_size).transpose(1, 2)

        q, k, v = heads(self.q_proj), heads(self.k_proj), heads(self.v_proj)
        scores = (q @ k.transpose(-2, -1)) * self.head_size**-0.5  # (b, heads, t, t)
        future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
        y = scores.softmax(dim=-1) @ v  # (b, heads, t, head_dim)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, cfg: TinyGPTConfig, block: int) -> None:
        super().__init__()
        d, units = cfg.block_residual[block], cfg.block_units[block]
        self.fc_in = nn.Linear(d, units)
        self.fc_out = nn.Linear(units, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.gelu(self.fc_in(x)))


class Block(nn.Module):
    def __init__(self, cfg: TinyGPTConfig, block: int) -> None:
        super().__init__()
        self.width = cfg.block_residual[block]
        self.ln1, self.ln2 = nn.LayerNorm(self.width), nn.LayerNorm(self.width)
        self.attn, self.mlp = Attention(cfg, block), MLP(cfg, block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > self.width:  # a wider stream meets this narrow block: keep its
            x = x[..., :self.width].contiguous()  # first channels (a copy: the wide one goes)
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyGPT(PreTrainedModel):
    config_class = TinyGPTConfig
    config: TinyGPTConfig
    base_model_prefix = "tinygpt"

    def __init__(self, config: TinyGPTConfig) -> None:
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.embed_width)
        self.wpe = nn.Embedding(config.max_seq_len, config.embed_width)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.head_width)
        self.lm_head = nn.Linear(config.head_width, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, **_: object
    ) -> CausalLMOutput:
        """input_ids, labels: (batch, time) int64; labels are the next characters."""
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.wte(input_ids) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (batch, time, vocab)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
        return CausalLMOutput(loss=loss, logits=logits)


# Layer groups (see the module's docstring) are built and read only through these.
EMBED, HEAD = "embed", "head"


def block_group(i: int) -> str:
    """The group of block `i`."""
    return f"block.{i}"


def block_of(group: str) -> int | None:
    """The block number of a group; None for the embeddings and the head."""
    return int(group.removeprefix("block.")) if group.startswith("block.") else None


def block_number(group: str) -> int:
    """The block number of a group that is a block (ValueError otherwise)."""
    block = block_of(group)
    if block is None:
        raise ValueError(f"{group!r} is not a block")
    return block


def layer_groups(n_layer: int) -> list[str]:
    """The model's layer groups in forward order."""
    return [EMBED, *(block_group(i) for i in range(n_layer)), HEAD]


def group_of(param_name: str) -> str:
    """Which layer group a parameter (state-dict key) belongs to."""
    if param_name.startswith(("wte.", "wpe.")):
        return EMBED
    if param_name.startswith("blocks."):
        return block_group(int(param_name.split(".")[1]))
    return HEAD


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model and how it is pretrained on the server corpus."""

    name: str
    config: TinyGPTConfig
    # At most this many steps: pretraining stops once the held-out sonnets stop improving
    # (fleetsim/zoo/pretrain.py).
    pretrain_steps: int = 2000
    pretrain_lr: float = 3e-3
    pretrain_batch: int = 32


def _entry(n_layer: int, n_embd: int, n_head: int) -> ZooEntry:
    cfg = TinyGPTConfig(n_layer=n_layer, n_embd=n_embd, n_head=n_head)
    return ZooEntry(f"gpt-{n_layer}x{n_embd}", cfg)


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        _entry(2, 64, 4),
        _entry(4, 128, 4),
        _entry(6, 192, 6),
        _entry(8, 256, 8),
        # many thin blocks (heads of 8): SLT's own setting, trained from scratch, has
        # a step per block to walk through
        _entry(8, 64, 8),
    )
}

# The architectures the architecture-choosing policies (CAFF, small_model) pick from by
# default: the pretrained family, without gpt-8x64, which is there for SLT's setting.
ARCHITECTURES: tuple[str, ...] = ("gpt-2x64", "gpt-4x128", "gpt-6x192", "gpt-8x256")
