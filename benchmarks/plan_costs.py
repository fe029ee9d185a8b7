"""Peak memory, FLOPs and upload of each plan kind on one model, as a markdown table:
the memory side of CAFF's claim against LoRA.

    .venv/bin/python benchmarks/plan_costs.py [--model gpt-4x128] [--batch 16] [--optimizer adam]
"""

from __future__ import annotations

import argparse

import torch

from fleetsim.cli import OPTIMIZERS
from fleetsim.device.cost import estimate_cost, parse_plan
from fleetsim.device.training import measure_step
from fleetsim.zoo.model import ZOO

PLANS = ("full", "last:2", "last:1", "head", "lora:8", "lora:16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt-4x128")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=80)
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = ZOO[args.model].config
    print(f"{args.model}, batch {args.batch}, {args.seq} characters, {args.optimizer}\n")
    print("| plan | predicted peak MB | measured peak MB | GFLOP/step | upload MB |")
    print("|---|---|---|---|---|")
    for spec in PLANS:
        plan = parse_plan(spec, config, args.batch, OPTIMIZERS[args.optimizer])
        cost = estimate_cost(config, plan, args.seq)
        measured, _ = measure_step(config, plan, args.seq)
        print(f"| {spec} | {cost.predicted_peak_bytes / 2**20:.1f} | {measured / 2**20:.1f} "
              f"| {cost.flops_per_step / 1e9:.2f} | {cost.upload_bytes / 1e6:.3f} |")


if __name__ == "__main__":
    main()
