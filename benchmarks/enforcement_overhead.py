"""What enforcing a memory cap costs: local training with and without the MemoryMeter,
side by side in one process, interleaved so that machine noise hits both alike. As in
the hosts, the meter watches the first two steps (later steps repeat them exactly);
`--steps 2` shows the cost of metering every step.

    .venv/bin/python benchmarks/enforcement_overhead.py [--model gpt-4x128] [--repeats 5]

Prints the median step time of each and their ratio (goal: at most 1.10).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from fleetsim.device.cost import parse_plan
from fleetsim.device.memory import MemoryMeter
from fleetsim.device.training import train_local
from fleetsim.zoo.model import ZOO, TinyGPT


def timed_steps(model: TinyGPT, plan, windows: np.ndarray, metered: bool) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    meter = MemoryMeter(cap_bytes=1 << 40, resident=model.state_dict().values())
    train_local(model, plan, windows, seed=0, meter=meter if metered else None)
    return (time.perf_counter() - start) / plan.local_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt-4x128")
    parser.add_argument("--plan", default="full")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = ZOO[args.model].config
    plan = parse_plan(args.plan, config, args.batch, local_steps=args.steps, lr=1e-3)
    windows = np.random.default_rng(0).integers(0, 90, (256, 81)).astype(np.uint8)
    model = TinyGPT(config)
    timed_steps(model, plan, windows, metered=True)  # warm up both paths
    timed_steps(model, plan, windows, metered=False)
    bare, metered = [], []
    for i in range(args.repeats):  # alternate which goes first: drift hits both alike
        first, second = (False, True) if i % 2 == 0 else (True, False)
        times = {first: timed_steps(model, plan, windows, first),
                 second: timed_steps(model, plan, windows, second)}
        bare.append(times[False])
        metered.append(times[True])
    b, m = statistics.median(bare), statistics.median(metered)
    ratio = statistics.median(x / y for x, y in zip(metered, bare, strict=True))
    print(f"{args.model} {args.plan} batch {args.batch}, 1 thread, {args.repeats} x "
          f"{args.steps} steps each")
    print(f"bare step {b * 1e3:.1f} ms, metered step {m * 1e3:.1f} ms (medians); "
          f"median of paired ratios {ratio:.3f} (goal <= 1.10)")


if __name__ == "__main__":
    main()
