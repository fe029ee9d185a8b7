"""Soak: many devices and rounds of clock, churn, dynamic constraints and planning (a
dry run: no training), watching the process's resident memory stay flat.

    .venv/bin/python benchmarks/soak.py [--devices 20000] [--rounds 2000] [--policy caff]

Prints the resident set size every tenth of the run and the growth from the first
tenth to the end (goal: flat, under 5%), with the wall time per round.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from fleetsim.engine import run_scenario
from fleetsim.scenario import load_scenario
from fleetsim.session import RunSetup

SCENARIO = """
name: soak
seed: 0
rounds: {rounds}
model: {{name: gpt-4x128}}
fleet:
  - {{class: phone_low, count: {third}, availability: {{kind: markov, mean_online_s: 600,
     mean_offline_s: 300}}, bandwidth_walk: {{sigma: 0.2, every_s: 60}}}}
  - {{class: phone_mid, count: {third}, availability: {{kind: bernoulli, p: 0.7}},
     throttle: {{after_s: 5, factor: 0.5}}}}
  - {{class: rpi4, count: {rest}}}
selection: {{devices_per_round: 100, over_selection: 0.3, deadline_s: 120}}
training: {{local_steps: 10, batch_size: 16, optimizer: {{name: adam}}, lr: 0.002}}
policy: {{name: {policy}}}
events:
  - {{at_s: 3600, until_s: 7200, class: phone_low, memory_factor: 0.4}}
"""


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


class RssObserver:
    """Samples the resident memory every `every` rounds."""

    def __init__(self, every: int) -> None:
        self.every, self.samples = every, []  # type: list[tuple[int, int, float]]
        self.start = time.perf_counter()

    def on_pretrain(self, *_: Any) -> None: ...
    def on_start(self, info: dict[str, Any]) -> None: ...
    def on_finish(self, summary: dict[str, Any]) -> None: ...

    def on_round(self, record: Any, devices: Any) -> None:
        if (record.round + 1) % self.every == 0:
            self.samples.append((record.round + 1, rss_bytes(), time.perf_counter()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--policy", default="caff")
    args = parser.parse_args()
    third = args.devices // 3
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "soak.yaml"
        source.write_text(SCENARIO.format(rounds=args.rounds, third=third, policy=args.policy,
                                          rest=args.devices - 2 * third))
        observer = RssObserver(max(args.rounds // 10, 1))
        setup = RunSetup(load_scenario(source), source, dry_run=True)
        asyncio.run(run_scenario(setup, Path(tmp) / "out", observer))
    print(f"{args.devices} devices, {args.rounds} rounds, policy {args.policy} (dry run)")
    last_t = observer.start
    for rounds, rss, t in observer.samples:
        per_round = (t - last_t) / observer.every * 1000
        print(f"  after round {rounds:6d}: RSS {rss / 2**20:7.1f} MB, {per_round:6.1f} ms/round")
        last_t = t
    first, last = observer.samples[0][1], observer.samples[-1][1]
    print(f"RSS growth from the first tenth to the end: {(last / first - 1) * 100:+.1f}% "
          f"({first / 2**20:.1f} -> {last / 2**20:.1f} MB)")


if __name__ == "__main__":
    main()
