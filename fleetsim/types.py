"""Values that cross module boundaries: devices, plans, updates, contexts, records.

All frozen. Units are in the names. Arrays in a `ModelState` are float32 numpy arrays
keyed by state-dict name; nobody mutates a state they were given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

DeviceId = int
ModelState = Mapping[str, np.ndarray]
Status = Literal["ok", "oom", "straggler", "offline", "failed", "skipped", "stale"]


MIB = 1 << 20  # bytes in a MiB: device budgets and memory are given in MiB

@dataclass(frozen=True)
class DeviceState:
    """One device as it is now: its class profile plus its current constraints."""

    device_id: DeviceId
    device_class: str
    memory_bytes: int
    flops_per_s: float
    uplink_bps: float
    downlink_bps: float
    latency_s: float
    compute_jitter: float
    num_examples: int  # training windows held by the device
    throttle_after_s: float = math.inf  # computing longer than this in a round ...
    throttle_factor: float = 1.0  # ... runs at this fraction of flops_per_s


@dataclass(frozen=True)
class OptimizerSpec:
    name: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0

    @property
    def state_slots(self) -> int:
        """Optimizer tensors kept per trainable parameter."""
        if self.name == "adam":
            return 2
        return 1 if self.momentum > 0 else 0


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapters (through peft) on the named linear layers of every block. The
    update is scaled by `scale` (peft's alpha / r) whatever the rank, so devices of
    different ranks and the global model agree on what an adapter means."""

    rank: int
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    scale: int = 2


@dataclass(frozen=True)
class Slice:
    """The part of one block a sub-model keeps: attention heads, FFN hidden units and
    residual channels, by their (sorted) index in the global block. `residual` empty
    means the whole residual width (the default: only heads and units are sliced).

    A narrow residual narrows the block's LayerNorms, its projections' residual side
    and, for the first block, the embeddings, for the last block, the head. Blocks can
    only narrow the residual stream: each block's channels are the first ones of the
    previous block's (a full-width stream is cut there, SLT's slicing shortcut)."""

    heads: tuple[int, ...]
    units: tuple[int, ...]
    residual: tuple[int, ...] = ()


# Sliced blocks of a plan, by group name ("block.i"); blocks not named keep full width.
Slices = tuple[tuple[str, Slice], ...]


@dataclass(frozen=True)
class TrainingPlan:
    """What one device does this round.

    `train` groups get gradients and are uploaded; `frozen` groups run forward only;
    groups in neither are left out. Group names are those of `fleetsim.zoo.model.layer_groups`.
    With `lora`, adapters on the frozen blocks train too (and are uploaded). Blocks
    named in `slices` are held at reduced width: the device slices them out of the
    global tensors and uploads the sliced tensors with where they sit.
    """

    train: tuple[str, ...]
    frozen: tuple[str, ...]
    local_steps: int
    batch_size: int
    lr: float
    optimizer: OptimizerSpec = OptimizerSpec()
    lora: LoraSpec | None = None
    slices: Slices = ()


@dataclass(frozen=True)
class Update:
    """What a device sends back: trained tensors, where they sit, and their weight.

    `index[name]`, when present, locates `tensors[name]` inside the global tensor: one
    entry per dimension, an integer array or a whole-axis slice (numpy indexing, as in
    `global[index] = tensor`; two arrays index the outer product, as `np.ix_` makes
    them); absent means the whole.
    """

    device_id: DeviceId
    weight: float
    tensors: Mapping[str, np.ndarray]
    index: Mapping[str, tuple[np.ndarray | slice, ...]] = field(default_factory=dict)
    checksum: str = ""  # sha256 of the tensors as sent: a corrupted upload fails it


@dataclass(frozen=True)
class ModelInfo:
    """What policies know about the global model."""

    name: str
    n_layer: int
    groups: tuple[str, ...]
    group_params: Mapping[str, int]  # parameters per layer group
    config: Any  # fleetsim.zoo.model.TinyGPTConfig
    adapters: LoraSpec | None = None  # LoRA adapters in the global state


@dataclass(frozen=True)
class TrainingDefaults:
    """The scenario's training settings, resolved for this round."""

    local_steps: int | None
    local_epochs: float | None
    batch_size: int
    lr: float
    optimizer: OptimizerSpec
    seq_len: int
    # The scenario's model.slice_residual: width-reduced sub-models narrow the residual
    # width too (Slice.residual). Here because every policy already receives it.
    slice_residual: bool = False


@dataclass(frozen=True)
class SetupContext:
    devices: tuple[DeviceState, ...]  # the whole fleet, constraints at time 0
    model_name: str  # the scenario's model
    training: TrainingDefaults
    deadline_s: float  # a round's deadline: the time budget of a device's round
    total_rounds: int


@dataclass(frozen=True)
class ModelChoice:
    model_name: str
    adapters: LoraSpec | None = None  # the global model carries adapters of this rank


@dataclass(frozen=True)
class Evaluation:
    """The global model's score on the evaluation windows (None in a dry run)."""

    accuracy: float | None
    loss: float | None


@dataclass(frozen=True)
class RoundContext:
    round: int  # 0-based
    total_rounds: int
    sim_time_s: float
    devices: tuple[DeviceState, ...]  # selected this round, constraints as of now
    model: ModelInfo
    training: TrainingDefaults
    deadline_s: float
    previous: RoundRecord | None  # the previous round's record (None in the first)
    rng: np.random.Generator
    previous_devices: tuple[DeviceRecord, ...] = ()  # its device records: who failed, why


@dataclass(frozen=True)
class DeviceRecord:
    device_id: DeviceId
    device_class: str
    round: int
    plan: str
    status: Status
    peak_mem_bytes: int
    mem_cap_bytes: int
    flops: float
    compute_s: float
    download_s: float
    upload_s: float
    bytes_up: int
    bytes_down: int
    host: str
    loss: float | None = None
    error: str = ""  # why an `oom` or `failed` device lost its update


@dataclass(frozen=True)
class RoundRecord:
    round: int
    sim_time_s: float  # virtual time at the end of the round
    round_time_s: float  # virtual duration of the round
    wall_time_s: float
    accuracy: float | None
    loss: float | None
    train_loss: float | None
    selected: int
    completed: int
    stragglers: int
    offline: int
    oom: int
    failed: int
    skipped: int
    bytes_up: int
    bytes_down: int
    aggregated: bool
    online: int = 0  # devices online when the round started
    online_by_class: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class JobRecord(DeviceRecord):
    """A device's job in asynchronous mode (`round`: the server step it ended in): when
    it was sent and ended on the clock, the version it started from, and how many
    server steps old its update was when it arrived (None: it never arrived)."""

    dispatch_s: float = 0.0
    end_s: float = 0.0
    start_version: int = 0
    staleness: int | None = None


@dataclass(frozen=True)
class StepRecord(RoundRecord):
    """A server step in asynchronous mode (`round`: the step; it makes version round + 1;
    `round_time_s`: the time since the previous step)."""

    stale: int = 0  # updates dropped as too old
    staleness_mean: float | None = None  # of the updates applied
    staleness_max: int | None = None
    in_flight: int = 0  # jobs still training when the step was made
