"""How far the cost model's predicted peak memory is from the measured peak, over every
zoo model x plan kind x optimizer, at a realistic shape.

    .venv/bin/python benchmarks/cost_error.py [--batch 16] [--seq 80]

Prints one row per case and the largest relative error (goal 5%, bound 10%).
"""

from __future__ import annotations

import argparse

import torch

from fleetsim.device.cost import parse_plan, predict_peak_bytes
from fleetsim.device.training import measure_step
from fleetsim.types import OptimizerSpec
from fleetsim.zoo.model import ZOO

PLANS = ("full", "last:1", "last:2", "head", "lora:8", "width:0.25", "width:0.5")
OPTIMIZERS = {"sgd": OptimizerSpec("sgd"), "momentum": OptimizerSpec("sgd", momentum=0.9),
              "adam": OptimizerSpec("adam")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=80)
    args = parser.parse_args()
    torch.set_num_threads(1)
    worst = (0.0, "")
    print(f"{'model':10} {'plan':10} {'optimizer':9} {'measured MB':>11} {'predicted MB':>12} "
          f"{'error':>7}")
    for model, entry in ZOO.items():
        for spec in PLANS:
            for name, optimizer in OPTIMIZERS.items():
                plan = parse_plan(spec, entry.config, args.batch, optimizer)
                measured, _ = measure_step(entry.config, plan, args.seq)
                predicted = predict_peak_bytes(entry.config, plan, args.seq)
                error = predicted / measured - 1
                worst = max(worst, (abs(error), f"{model} {spec} {name}"))
                print(f"{model:10} {spec:10} {name:9} {measured / 2**20:11.2f} "
                      f"{predicted / 2**20:12.2f} {error * 100:+6.1f}%")
    print(f"largest error {worst[0] * 100:.1f}% ({worst[1]}); batch {args.batch}, "
          f"seq {args.seq}")


if __name__ == "__main__":
    main()
