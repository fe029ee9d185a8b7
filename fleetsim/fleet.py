"""The fleet: every device's profile and, at any simulated time, its current state.

Devices are data. This foundation keeps every device online with its profile's
constraints; availability traces and constraints that change over time plug in here.
"""

from __future__ import annotations

from collections.abc import Sequence

from fleetsim.scenario import DeviceProfile
from fleetsim.types import DeviceState

MIB = 1024 * 1024


class Fleet:
    def __init__(self, profiles: Sequence[DeviceProfile], num_examples: Sequence[int]) -> None:
        if len(profiles) != len(num_examples):
            raise ValueError("one example count per device")
        self.profiles = tuple(profiles)
        self.num_examples = tuple(num_examples)

    def __len__(self) -> int:
        return len(self.profiles)

    def state(self, device_id: int, now_s: float) -> DeviceState:
        """The device as it is at simulated time `now_s`."""
        p = self.profiles[device_id]
        return DeviceState(
            device_id=device_id,
            device_class=p.name,
            memory_bytes=int(p.memory_mb * MIB),
            flops_per_s=p.flops_per_s,
            uplink_bps=p.uplink_bps,
            downlink_bps=p.downlink_bps,
            latency_s=p.latency_s,
            compute_jitter=p.compute_jitter,
            num_examples=self.num_examples[device_id],
        )

    def online(self, now_s: float) -> list[int]:
        """Ids of the devices available at `now_s`, ascending."""
        return list(range(len(self.profiles)))
