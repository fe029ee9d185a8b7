"""Memory caps that bite: count what a device's training holds, fail where a device would.

On CPU torch has no per-process limit, so `MemoryMeter` counts live tensor bytes
exactly: the resident weights, plus every tensor an operator returns (gradients,
optimizer state, activations saved for backward, temporaries) from its allocation until
its storage is freed. The operator whose output crosses the cap raises `DeviceOOM`,
the way a device's allocator fails. On CUDA, `CudaMemoryCap` uses the per-process
memory fraction and the allocator's peak statistics instead.
"""

from __future__ import annotations

import logging
import resource
import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from fleetsim.errors import DeviceOOM

log = logging.getLogger(__name__)


class _StorageRef(weakref.ref):
    """A weak reference to a counted storage that remembers its size (cheaper than
    weakref.finalize, which is the per-operator cost that matters here)."""

    __slots__ = ("key", "size")
    key: int
    size: int


class MemoryMeter(TorchDispatchMode):
    """Live tensor bytes while active; `peak_bytes` is the high-water mark.

    `resident` tensors (the model's weights) count from the start. Storages shared by
    views are counted once. With `cap_bytes` set, crossing it raises DeviceOOM.
    """

    def __init__(self, cap_bytes: int | None = None, resident: Iterable[torch.Tensor] = ()
                 ) -> None:
        super().__init__()
        self.cap_bytes = cap_bytes
        self._refs: dict[int, _StorageRef] = {}  # id(storage) -> its weak reference
        self._resident: set[int] = set()
        self.live_bytes = 0
        for tensor in resident:
            storage = tensor.untyped_storage()
            if id(storage) not in self._resident:
                self._resident.add(id(storage))
                self.live_bytes += storage.nbytes()
        self.peak_bytes = self.live_bytes

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None
                           ) -> Any:
        out = func(*args, **kwargs) if kwargs else func(*args)
        if func.is_view:  # shares its input's storage: nothing new
            return out
        if isinstance(out, torch.Tensor):  # the common case, without a tree walk
            self._track(out)
        else:
            for leaf in tree_leaves(out):
                if isinstance(leaf, torch.Tensor):
                    self._track(leaf)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._refs or key in self._resident:
            return
        ref = _StorageRef(storage, self._release)
        ref.key, ref.size = key, storage.nbytes()
        self._refs[key] = ref
        self.live_bytes += ref.size
        if self.live_bytes > self.peak_bytes:
            self.peak_bytes = self.live_bytes
            if self.cap_bytes is not None and self.live_bytes > self.cap_bytes:
                raise DeviceOOM(self.live_bytes, self.cap_bytes)

    def _release(self, ref: _StorageRef) -> None:
        """The storage is gone (called before its id can be reused): stop counting it."""
        if self._refs.get(ref.key) is ref:
            del self._refs[ref.key]
            self.live_bytes -= ref.size


class CudaMemoryCap:
    """The CUDA path: cap the process's share of the GPU and read the allocator's peak.

    The peak counts from `reset` (weights already on the GPU included); an allocation
    beyond the cap raises torch's OutOfMemoryError, turned into DeviceOOM.
    """

    def __init__(self, cap_bytes: int, device: torch.device) -> None:
        self.cap_bytes, self.device = cap_bytes, device
        self.peak_bytes = 0

    def __enter__(self) -> CudaMemoryCap:
        total = torch.cuda.get_device_properties(self.device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, self.cap_bytes / total), self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        torch.cuda.set_per_process_memory_fraction(1.0, self.device)
        if isinstance(error, torch.cuda.OutOfMemoryError):
            raise DeviceOOM(max(self.peak_bytes, self.cap_bytes + 1), self.cap_bytes) from None


def limit_process_data(margin_bytes: int) -> int | None:
    """A safety net under the exact cap: RLIMIT_DATA at the current data size plus a margin,
    so a runaway host process fails instead of swapping the machine. Returns the limit."""
    try:
        with open("/proc/self/status") as status:
            data_kb = next(int(line.split()[1]) for line in status if line.startswith("VmData:"))
    except (OSError, StopIteration):
        return None  # not Linux: no safety net
    limit = data_kb * 1024 + margin_bytes
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    return limit
