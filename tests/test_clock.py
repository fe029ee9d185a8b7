"""The SimPy clock against hand-computed timings."""

import numpy as np
import pytest

from fleetsim.world.clock import Clock, ClockJob


def job(device_id: int, *, down: int = 1_000_000, up: int = 500_000, flops: float = 4e9,
        rate: float = 1e9, jitter: float = 0.0) -> ClockJob:
    # 1 MB down at 8 Mbit/s = 1 s (+0.1 s latency); 4 GFLOP at 1 GFLOP/s = 4 s;
    # 0.5 MB up at 2 Mbit/s = 2 s (+0.1 s latency): 7.2 s in all.
    return ClockJob(device_id, down, up, flops, rate, downlink_bps=8e6, uplink_bps=2e6,
                    latency_s=0.1, compute_jitter=jitter)


def test_durations_match_hand_computation() -> None:
    down, compute, up = job(0).durations(np.random.default_rng(0))
    assert (down, compute, up) == pytest.approx((1.1, 4.0, 2.1))


def test_round_ends_when_all_finish_and_time_advances() -> None:
    clock = Clock()
    timing = clock.run_round([job(0), job(1, rate=2e9)], keep=2, deadline_s=100,
                             rng=np.random.default_rng(0))
    assert timing.end_s == pytest.approx(7.2)  # the slower device: 1.1 + 4 + 2.1
    assert sorted(timing.finishers) == [0, 1]
    second = clock.run_round([job(0)], keep=1, deadline_s=100, rng=np.random.default_rng(0))
    assert second.start_s == pytest.approx(7.2)
    assert second.end_s == pytest.approx(14.4)


def test_deadline_cuts_off_stragglers() -> None:
    clock = Clock()
    # device 1 computes 40 s: it misses a 10 s deadline
    timing = clock.run_round([job(0), job(1, flops=40e9)], keep=2, deadline_s=10,
                             rng=np.random.default_rng(0))
    assert timing.end_s == pytest.approx(10.0)
    assert timing.finishers == [0]
    assert [t.finished for t in timing.devices] == [True, False]


def test_over_selection_keeps_the_first_k() -> None:
    clock = Clock()
    jobs = [job(0, rate=1e9), job(1, rate=4e9), job(2, rate=2e9)]  # compute 4, 1 and 2 s
    timing = clock.run_round(jobs, keep=2, deadline_s=100, rng=np.random.default_rng(0))
    assert sorted(timing.finishers) == [1, 2]
    assert timing.end_s == pytest.approx(1.1 + 2.0 + 2.1)  # when the second one uploads


def test_jitter_is_seeded() -> None:
    jobs = [job(i, jitter=0.5) for i in range(5)]
    a = Clock().run_round(jobs, keep=5, deadline_s=1e6, rng=np.random.default_rng(7))
    # each device's 4 s of compute times a log-normal factor exp(0.5 z), drawn from the
    # round's generator in device order; the round ends with the slowest upload
    rng = np.random.default_rng(7)
    compute = [4.0 * rng.lognormal(0.0, 0.5) for _ in jobs]
    assert [t.compute_s for t in a.devices] == pytest.approx(compute, rel=1e-12)
    assert a.end_s == pytest.approx(1.1 + max(compute) + 2.1)
    assert a == Clock().run_round(jobs, keep=5, deadline_s=1e6, rng=np.random.default_rng(7))


def test_empty_round_takes_no_time() -> None:
    clock = Clock(start_s=5.0)
    timing = clock.run_round([], keep=3, deadline_s=10, rng=np.random.default_rng(0))
    assert timing.end_s == 5.0 and timing.finishers == []


def test_a_device_going_offline_mid_round_drops_out_at_that_moment() -> None:
    clock = Clock()
    leaving = ClockJob(**{**job(1).__dict__, "offline_at_s": 3.0})
    timing = clock.run_round([job(0), leaving], keep=2, deadline_s=100,
                             rng=np.random.default_rng(0))
    assert timing.finishers == [0]
    assert [t.offline for t in timing.devices] == [False, True]
    assert timing.end_s == pytest.approx(7.2)  # the round waited for device 0 only


def test_throttling_slows_compute_after_its_threshold() -> None:
    hot = ClockJob(**{**job(0).__dict__, "throttle_after_s": 1.0, "throttle_factor": 0.5})
    assert hot.nominal_durations()[1] == pytest.approx(1.0 + 3.0 / 0.5)
    assert hot.durations(np.random.default_rng(0))[1] == pytest.approx(7.0)
