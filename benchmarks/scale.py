"""Scale: a dry run (clock, churn, dynamic constraints and the policy's planning; no
training) of a 100,000-device fleet, 100 devices a round, 1,000 rounds.

    .venv/bin/python benchmarks/scale.py [--devices 100000] [--rounds 1000] [--policy caff]

Prints the wall time (goal: under 60 s), the time per round, and the process's peak
resident memory (goal: under 1 GB), with a checkpoint after every round as in any run.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from pathlib import Path

from fleetsim.engine import run_scenario
from fleetsim.monitor import PlainObserver
from fleetsim.scenario import load_scenario
from fleetsim.session import RunSetup

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
selection: {{devices_per_round: 100, deadline_s: 300}}
training: {{local_steps: 10, batch_size: 16, optimizer: {{name: adam}}, lr: 0.002}}
policy: {{name: {policy}}}
events:
  - {{at_s: 600, until_s: 1800, class: phone_low, memory_factor: 0.4}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--policy", default="caff")
    args = parser.parse_args()
    quarter = args.devices // 4
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "scale.yaml"
        source.write_text(SCENARIO.format(rounds=args.rounds, quarter=quarter, policy=args.policy,
                                          rest=args.devices - 3 * quarter))
        scenario = load_scenario(source)
        start = time.perf_counter()
        with (Path(tmp) / "log").open("w") as log:
            summary = asyncio.run(run_scenario(RunSetup(scenario, source, dry_run=True),
                                               Path(tmp) / "out", PlainObserver(Path(tmp), log)))
        wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rounds = summary["rounds_completed"]
    print(f"{args.devices} devices, {rounds} rounds, policy {args.policy} (dry run): "
          f"{wall:.1f} s wall ({wall / rounds * 1000:.1f} ms a round, goal under 60 s in "
          f"all), peak RSS {peak / 2**30:.2f} GiB (goal under 1 GiB); "
          f"{summary['device_rounds']['selected']} device-rounds, "
          f"{summary['device_rounds']['offline']} dropped offline")


if __name__ == "__main__":
    main()
