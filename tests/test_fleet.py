"""The fleet over simulated time: availability models, trace files, scheduled events,
bandwidth walks, and snapshots that let a resumed run continue the same churn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fleetsim.config.scenario import device_profiles as profiles_of
from fleetsim.config.scenario import load_scenario
from fleetsim.types import MIB
from fleetsim.world.availability import Bernoulli, Markov, Trace, load_trace
from fleetsim.world.fleet import Fleet, build_fleet


def test_markov_matches_its_stationary_share_and_drop_times() -> None:
    chain = Markov(2000, mean_online_s=300, mean_offline_s=100, rng=np.random.default_rng(0))
    shares = [chain.online(t).mean() for t in np.arange(0, 20000, 500)]
    assert np.mean(shares) == pytest.approx(0.75, abs=0.02)
    now = 20000.0
    online = np.flatnonzero(chain.online(now))
    device = int(online[0])
    drop = chain.offline_at(device, now)
    assert drop > now
    assert chain.online(drop - 1e-6)[device] and not chain.online(drop)[device]


def test_bernoulli_draws_once_per_time_asked() -> None:
    coin = Bernoulli(5000, 0.3, np.random.default_rng(1))
    # each new time asked: one uniform draw per device from the generator, online below p
    draws = np.random.default_rng(1)
    first = coin.online(10.0)
    np.testing.assert_array_equal(first, draws.random(5000) < 0.3)
    assert first.mean() == pytest.approx(0.3, abs=0.03)
    np.testing.assert_array_equal(coin.online(10.0), first)  # the same time: no new draw
    np.testing.assert_array_equal(coin.online(20.0), draws.random(5000) < 0.3)


def test_trace_formats_agree(tmp_path: Path) -> None:
    fedscale = {"7": {"active": [0, 100], "inactive": [50, 150], "finish_time": 200},
                "12": {"active": [20], "inactive": [80], "finish_time": 200}}
    (tmp_path / "fs.json").write_text(json.dumps(fedscale))
    plain = {"period_s": 200, "devices": [[[0, 50], [100, 150]], [[20, 80]]]}
    (tmp_path / "plain.json").write_text(json.dumps(plain))
    (tmp_path / "t.csv").write_text("device,start_s,end_s\n0,0,50\n0,100,150\n1,20,80\n")
    fs = Trace(*load_trace(tmp_path / "fs.json", 3))
    pl = Trace(*load_trace(tmp_path / "plain.json", 3))
    csv_trace = Trace(*load_trace(tmp_path / "t.csv", 3))
    for t in (0, 30, 60, 120, 170, 230, 330):
        np.testing.assert_array_equal(fs.online(t), pl.online(t))
        if t < 200:
            np.testing.assert_array_equal(fs.online(t), csv_trace.online(t))
    assert list(fs.online(30)) == [True, True, True]  # device 2 repeats client "7"
    assert fs.offline_at(1, 30) == 80 and fs.offline_at(0, 230) == 250  # periodic
    assert fs.offline_at(0, 60) == 60  # offline now


def test_bad_trace_is_a_config_error(tmp_path: Path) -> None:
    from fleetsim.errors import ConfigError

    (tmp_path / "bad.json").write_text("[1, 2]")
    (tmp_path / "s.yaml").write_text("""
rounds: 1
fleet: [{class: rpi4, count: 2, availability: {kind: trace, trace: bad.json}}]
selection: {devices_per_round: 1}
""")
    with pytest.raises(ConfigError) as info:
        load_scenario(tmp_path / "s.yaml")
    assert info.value.key == "fleet[0].availability.trace"


DYNAMIC = """
rounds: 1
seed: 3
fleet:
  - {class: phone_low, count: 3, availability: {kind: markov, mean_online_s: 50,
     mean_offline_s: 50}, bandwidth_walk: {sigma: 0.3, every_s: 10, low: 0.5, high: 1.5}}
  - {class: rpi4, count: 2, throttle: {after_s: 5, factor: 0.5}}
selection: {devices_per_round: 1}
events:
  - {at_s: 100, until_s: 200, class: phone_low, memory_factor: 0.4}
  - {at_s: 150, devices: [4], flops_factor: 0.5}
"""


def dynamic_fleet(tmp_path: Path) -> Fleet:
    (tmp_path / "d.yaml").write_text(DYNAMIC)
    scenario = load_scenario(tmp_path / "d.yaml")
    return build_fleet(scenario, profiles_of(scenario), [10] * 5)


def test_events_squeeze_and_restore_constraints(tmp_path: Path) -> None:
    fleet = dynamic_fleet(tmp_path)
    assert fleet.state(0, 99).memory_bytes == 192 * MIB
    assert fleet.state(0, 100).memory_bytes == int(192 * MIB * 0.4)
    assert fleet.state(0, 200).memory_bytes == 192 * MIB
    assert fleet.state(3, 150).memory_bytes == 512 * MIB  # another class
    assert fleet.state(4, 150).flops_per_s == fleet.state(4, 0).flops_per_s / 2
    assert fleet.memory_during(0, 90, 110) == int(192 * MIB * 0.4)  # squeezed mid-round
    assert fleet.memory_during(0, 0, 90) == 192 * MIB
    assert fleet.state(3, 0).throttle_factor == 0.5 and fleet.state(0, 0).throttle_factor == 1


def test_walks_stay_in_bounds_and_snapshots_resume_the_same_fleet(tmp_path: Path) -> None:
    fleet, twin = dynamic_fleet(tmp_path), dynamic_fleet(tmp_path)
    seen = []
    for t in range(0, 400, 40):
        fleet.advance(t)
        seen.append((fleet.online(t), [fleet.state(i, t).uplink_bps for i in range(3)]))
        if t == 160:
            snap = fleet.snapshot()
    base = fleet.profiles[0].uplink_bps
    assert all(0.5 * base <= up <= 1.5 * base for _, ups in seen for up in ups)
    assert len({tuple(ups) for _, ups in seen}) > 5  # the walk moves
    twin.restore(snap)
    for t, (online, ups) in zip(range(200, 400, 40), seen[5:], strict=True):
        twin.advance(t)
        assert list(twin.online(t)) == list(online)
        assert [twin.state(i, t).uplink_bps for i in range(3)] == ups


def test_link_events_scale_each_link_of_the_named_devices(tmp_path: Path) -> None:
    from fleetsim.world.clock import ClockJob

    (tmp_path / "links.yaml").write_text("""
rounds: 1
fleet: [{class: rpi4, count: 2}, {class: phone_low, count: 1}]
selection: {devices_per_round: 1}
events:
  - {at_s: 10, until_s: 20, class: rpi4, uplink_factor: 0.5, downlink_factor: 0.25}
  - {at_s: 15, devices: [1], uplink_factor: 0.1}
""")
    scenario = load_scenario(tmp_path / "links.yaml")
    fleet = build_fleet(scenario, profiles_of(scenario), [10] * 3)
    # rpi4: 20 Mbit/s up, 60 Mbit/s down (devices/rpi4.yaml); phone_low 5 and 15
    links = {t: [(fleet.state(i, t).uplink_bps, fleet.state(i, t).downlink_bps)
                 for i in range(3)] for t in (9.9, 10, 15, 19.9, 20)}
    assert links[9.9] == [(2e7, 6e7), (2e7, 6e7), (5e6, 1.5e7)]
    assert links[20] == [(2e7, 6e7), (pytest.approx(2e6), 6e7), (5e6, 1.5e7)]  # no until_s
    assert links[10] == [(1e7, 1.5e7), (1e7, 1.5e7), (5e6, 1.5e7)]
    assert links[15] == links[19.9] == [(1e7, 1.5e7), (pytest.approx(1e6), 1.5e7),
                                        (5e6, 1.5e7)]
    # 1 MB down at 15 Mbit/s, 1 MB up at 1 Mbit/s, each with the 25 ms latency
    state = fleet.state(1, 15)
    job = ClockJob(1, 1_000_000, 1_000_000, 0.0, state.flops_per_s, state.downlink_bps,
                   state.uplink_bps, state.latency_s, 0.0)
    assert job.nominal_durations() == pytest.approx((0.025 + 8 / 15, 0.0, 0.025 + 8.0))
