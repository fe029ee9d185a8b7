"""The asynchronous clock on hand-computed timelines: dispatches, arrivals, buffer flushes,
staleness, drops for staleness, drop-outs, stragglers and waiting for a free device."""

from __future__ import annotations

import math

import pytest

from fleetsim.config.scenario import FedBuffConfig
from fleetsim.errors import FleetsimError
from fleetsim.world.dispatch import AsyncTimeline, Dispatch

BUSY = {0: 3.0, 1: 5.0, 2: 2.0}  # seconds of download + compute + upload, per device


def fleet(offline_at: dict[int, float] = {}, online_from: dict[int, float] = {}):  # noqa: B006
    """Dispatch the lowest free device ids that are online now (1 s down, the rest
    compute, 1 s up)."""
    def dispatch(now_s: float, count: int, version: int, busy: frozenset[int]) -> list[Dispatch]:
        free = [d for d in BUSY if d not in busy and online_from.get(d, 0.0) <= now_s
                < offline_at.get(d, math.inf)]
        return [Dispatch(d, 1.0, BUSY[d] - 2.0, 1.0, offline_at.get(d, math.inf))
                for d in free[:count]]
    return dispatch


def timeline(dispatch, deadline_s: float = 100.0, **config: object) -> AsyncTimeline:  # type: ignore[no-untyped-def]
    settings = {"concurrency": 2, "buffer_size": 2, **config}
    return AsyncTimeline(FedBuffConfig(**settings), deadline_s, dispatch)  # type: ignore[arg-type]


def seen(jobs) -> list[tuple]:  # type: ignore[no-untyped-def]
    """(device, dispatched at, start version, ended at, how, staleness) per job."""
    return [(j.dispatch.device_id, j.dispatch_s, j.start_version, j.end_s, j.ending,
             j.staleness) for j in jobs]


def test_buffer_flushes_every_k_arrivals_and_staleness_counts_steps() -> None:
    # t=0 send 0 (back at 3) and 1 (back at 5); t=3: 0 arrives, is sent again (back at
    # 6); t=5: 1 arrives: step 1 = {0, 1}; 1 sent from version 1 (back at 10); t=6: 0
    # arrives one step old, sent again from version 1 (back at 9); t=9: 0 arrives: step 2
    clock = timeline(fleet(), buffer_size=2)
    first, second = clock.next_step(), clock.next_step()
    assert (first.version, first.time_s, first.start_s) == (1, 5.0, 0.0)
    assert seen(first.arrived) == [(0, 0.0, 0, 3.0, "arrived", 0), (1, 0.0, 0, 5.0, "arrived", 0)]
    assert (second.version, second.time_s) == (2, 9.0)
    assert seen(second.arrived) == [(0, 3.0, 0, 6.0, "arrived", 1),
                                    (0, 6.0, 1, 9.0, "arrived", 0)]
    assert first.lost == second.lost == ()
    # jobs numbered as sent: 0 and 1 at t=0, 2 at 3, 3 at 5, 4 at 6
    assert [j.number for j in (*first.arrived, *second.arrived)] == [0, 1, 2, 4]


def test_an_update_older_than_max_staleness_is_dropped() -> None:
    # as above, but at t=6 device 0's update is one step old: dropped; its next job
    # (version 1, back at 9) and device 1's (version 1, back at 10) make step 2
    clock = timeline(fleet(), max_staleness=0)
    clock.next_step()
    second = clock.next_step()
    assert second.time_s == 10.0
    assert seen(second.lost) == [(0, 3.0, 0, 6.0, "stale", 1)]
    assert seen(second.arrived) == [(0, 6.0, 1, 9.0, "arrived", 0),
                                    (1, 5.0, 1, 10.0, "arrived", 0)]


def test_drop_outs_and_stragglers_free_their_slot_at_once() -> None:
    # device 1 goes offline at 4 (before its upload at 5): lost at 4, device 2 takes its
    # slot (back at 6); t=6: device 0's second job and device 2's arrive, in the order
    # they were scheduled: the first completes step 1, the second waits in the buffer
    clock = timeline(fleet(offline_at={1: 4.0}))
    step = clock.next_step()
    assert step.time_s == 6.0
    assert seen(step.lost) == [(1, 0.0, 0, 4.0, "offline", None)]
    assert seen(step.arrived) == [(0, 0.0, 0, 3.0, "arrived", 0), (0, 3.0, 0, 6.0, "arrived", 0)]
    assert clock.buffer == []  # device 2's arrival is the next event, at the same time
    clock.env.run(until=6.5)
    assert seen(clock.buffer) == [(2, 4.0, 0, 6.0, "arrived", 1)]
    # a 4 s deadline, one arrival a step: step 1 at 3 (device 0); device 1 (5 s) is
    # abandoned at 4 as a straggler and sent again; step 2 at 6 (device 0) records it
    late = timeline(fleet(), deadline_s=4.0, buffer_size=1)
    assert seen(late.next_step().arrived) == [(0, 0.0, 0, 3.0, "arrived", 0)]
    second = late.next_step()
    assert second.time_s == 6.0
    assert seen(second.lost) == [(1, 0.0, 0, 4.0, "straggler", None)]


def test_no_free_device_waits_and_tries_again() -> None:
    # device 0 comes online at 25; the server tries at 0, 10, 20 and 30 (wait_s 10):
    # sent at 30, back at 33 (FedAsync: one arrival a step)
    clock = timeline(fleet(online_from={0: 25.0, 1: math.inf, 2: math.inf}), buffer_size=1,
                     wait_s=10.0)
    step = clock.next_step()
    assert seen(step.arrived) == [(0, 30.0, 0, 33.0, "arrived", 0)]


def test_a_fleet_that_never_comes_online_is_an_error() -> None:
    never = {d: math.inf for d in BUSY}
    clock = timeline(fleet(online_from=never), wait_s=3600.0)
    with pytest.raises(FleetsimError, match="no device could be dispatched"):
        clock.next_step()
