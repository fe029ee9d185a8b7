"""Scale and soak: a dry run (clock, churn, dynamic constraints and the policy's
planning; no training) of a large fleet, 100 devices a round, with a checkpoint after
every round as in any run.

    .venv/bin/python benchmarks/scale.py [--devices 100000] [--rounds 1000] [--policy caff]
    .venv/bin/python benchmarks/scale.py --concurrency 1000 --rounds 10000  # asynchronous

With `--concurrency C`, the run is asynchronous (FedBuff, C devices training at once, a
server step every `--buffer` arrivals) and `--rounds` counts server steps (goal at
100,000 devices, C = 1,000 and 10,000 steps: under 60 s and 1 GiB).

Prints the resident memory every tenth of the run and its growth from the first tenth
to the end (soak goal: flat), the wall time (goal at 100,000 devices and 1,000 rounds:
under 60 s) and the process's peak resident memory (goal: under 1 GiB).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from fleetsim.config.scenario import load_scenario
from fleetsim.runtime.engine import run_scenario
from fleetsim.runtime.session import RunSetup

SCENARIO = """
name: scale
seed: 0
rounds: {rounds}
model: {{name: gpt-4x128}}
fleet:
  - {{class: phone_low, count: {quarter}, availability: {{kind: markov, mean_online_s: 1800,
     mean_offline_s: 900}}, bandwidth_walk: {{sigma: 0.2, every_s: 60}}}}
  - {{class: phone_mid, count: {quarter}, availability: {{kind: bernoulli, p: 0.6}}}}
  - {{class: rpi4, count: {quarter}, throttle: {{after_s: 5, factor: 0.5}}}}
  - {{class: phone_flagship, count: {rest}, availability: {{kind: markov,
     mean_online_s: 3600, mean_offline_s: 600}}}}
selection: {{devices_per_round: 100, deadline_s: 300, mode: {mode},
             fedbuff: {{concurrency: {concurrency}, buffer_size: {buffer}}}}}
training: {{local_steps: 10, batch_size: 16, optimizer: {{name: adam}}, lr: 0.002}}
policy: {{name: {policy}}}
events:
  - {{at_s: 600, until_s: 1800, class: phone_low, memory_factor: 0.4}}
"""


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


class RssObserver:
    """Samples the resident memory every `every` rounds."""

    def __init__(self, every: int) -> None:
        self.every, self.samples = every, []  # type: list[tuple[int, int]]

    def on_pretrain(self, *_: Any) -> None: ...
    def on_start(self, info: dict[str, Any]) -> None: ...
    def on_finish(self, summary: dict[str, Any]) -> None: ...

    def on_round(self, record: Any, devices: Any) -> None:
        if (record.round + 1) % self.every == 0:
            self.samples.append((record.round + 1, rss_bytes()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--policy", default="caff")
    parser.add_argument("--concurrency", type=int, help="asynchronous: devices at once")
    parser.add_argument("--buffer", type=int, default=10, help="asynchronous: K")
    args = parser.parse_args()
    quarter = args.devices // 4
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "scale.yaml"
        source.write_text(SCENARIO.format(
            rounds=args.rounds, quarter=quarter, policy=args.policy,
            rest=args.devices - 3 * quarter, mode="async" if args.concurrency else "sync",
            concurrency=args.concurrency or 1, buffer=args.buffer))
        scenario = load_scenario(source)
        observer = RssObserver(max(args.rounds // 10, 1))
        start = time.perf_counter()
        summary = asyncio.run(run_scenario(RunSetup(scenario, source, dry_run=True),
                                           Path(tmp) / "out", observer))
        wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rounds = summary["rounds_completed"]
    for done, rss in observer.samples:
        print(f"  after round {done:6d}: RSS {rss / 2**20:7.1f} MB")
    first, last = observer.samples[0][1], observer.samples[-1][1]
    print(f"RSS growth from the first tenth to the end: {(last / first - 1) * 100:+.1f}% "
          f"({first / 2**20:.1f} -> {last / 2**20:.1f} MB)")
    print(f"{args.devices} devices, {rounds} rounds, policy {args.policy} (dry run): "
          f"{wall:.1f} s wall ({wall / rounds * 1000:.1f} ms a round, goal under 60 s in "
          f"all), peak RSS {peak / 2**30:.2f} GiB (goal under 1 GiB); "
          f"{summary['device_rounds']['selected']} device-rounds, "
          f"{summary['device_rounds']['offline']} dropped offline")


if __name__ == "__main__":
    main()
