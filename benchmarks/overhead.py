"""What fleetsim costs on top of the training it emulates: one FedAvg job through
`fleetsim run` (Ray, one host per core) against the machine's limit for the same local
steps on the same data, side by side in one run:

- a bare torch loop on 1 thread, and on all threads (every step in one process);
- one single-thread bare process per core, each doing its share of the steps.

The job (as in the Flower comparison of issue 8): gpt-4x128, 20 clients, 5 a round, 10
rounds of 10 local SGD steps at batch 32. The limit is the fastest bare variant's
training time; fleetsim is timed as a whole process (start-up, Ray, evaluation before
and after, shutdown) and by its rounds alone.

    .venv/bin/python benchmarks/overhead.py [--rounds 10]

fleetsim runs three times: with one single-thread host per core (the default), with one
host training on every core (no idle core at a round's end: 5 jobs on 2 hosts run as
3 + 2), and asynchronously (FedBuff, 5 at once, a step every 5 arrivals: no barrier).
Prints each time and the ratios to the limit (goal: whole process at most 1.05x).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# The FedAvg job of issue 8 (vs_flower.py runs the same one)
SCENARIO = """
name: overhead
seed: 0
rounds: {rounds}
model: {{name: gpt-4x128}}
data: {{clients: {{min_train_samples: 32}}}}
fleet: [{{class: laptop, count: 20, overrides: {{compute_jitter: 0.0}}}}]
selection: {{devices_per_round: 5, deadline_s: 100000{asynchronous}}}
training: {{local_steps: 10, batch_size: 32, optimizer: {{name: sgd}}, lr: 0.05}}
policy: {{name: fedavg}}
eval: {{every: {rounds}, max_samples: {samples}}}
"""


CORES = os.cpu_count() or 1
# fleetsim's default pool, and one host training on every core (5 jobs on 2 single-thread
# hosts run as 3 + 2, so one core idles at each round's end)
VARIANTS = {"one host per core": "{count: auto}",
            f"one {CORES}-thread host": f"{{count: 1, threads_per_host: {CORES}}}",
            "one host per core, asynchronous": "{count: auto}"}
# FedBuff with 5 devices training at once and a step every 5 arrivals: the same 50 jobs
# in 10 server steps, without the round barrier
ASYNCHRONOUS = ", mode: async, fedbuff: {concurrency: 5, buffer_size: 5}"


def bare_steps(steps: int, threads: int, seed: int) -> float:
    """Seconds for `steps` full-model SGD steps on the clients' windows, bare torch."""
    import torch

    from fleetsim.zoo.data import build_federated
    from fleetsim.zoo.model import ZOO, TinyGPT

    torch.set_num_threads(threads)
    windows = np.concatenate([c.train for c in build_federated(
        20, 0, min_train_samples=32).clients]).astype(np.int64)
    data = torch.from_numpy(windows)
    model = TinyGPT(ZOO["gpt-4x128"].config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for _ in range(steps):
        batch = data[rng.integers(0, len(data), 32)]
        optimizer.zero_grad(set_to_none=True)
        model(batch[:, :-1], labels=batch[:, 1:]).loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def _share(args: tuple[int, int]) -> float:
    return bare_steps(args[0], 1, args[1])


def fleetsim_run(rounds: int, workers: str, asynchronous: bool = False
                 ) -> tuple[float, float]:
    """(whole process seconds, rounds-only seconds) of `fleetsim run` with `workers`."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "overhead.yaml"
        source.write_text(SCENARIO.format(rounds=rounds, samples=100, asynchronous=(
            ASYNCHRONOUS if asynchronous else "")) + f"workers: {workers}\n")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "fleetsim", "run", str(source), "--no-live",
                        "--out", str(Path(tmp) / "out")], check=True, capture_output=True)
        whole = time.perf_counter() - start
        rounds_s = sum(json.loads(line)["wall_time_s"]
                       for line in (Path(tmp) / "out" / "rounds.jsonl").open())
    return whole, rounds_s


def per_core(steps: int, cores: int) -> tuple[float, float]:
    """(slowest training loop, whole: processes started, imports, data, loops) of one
    single-thread bare process per core, each doing its share of the steps."""
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(cores) as pool:
        loops = max(pool.map(_share, [(steps // cores, i) for i in range(cores)]))
    return loops, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    cores = CORES
    steps = args.rounds * 5 * 10
    runs = {name: fleetsim_run(args.rounds, workers, "asynchronous" in name)
            for name, workers in VARIANTS.items()}
    one = bare_steps(steps, 1, 0)
    every = bare_steps(steps, cores, 0)
    loops, loops_whole = per_core(steps, cores)
    limit = min(one, every, loops)
    print(f"{steps} local steps (gpt-4x128, batch 32, SGD) on {cores} cores")
    print(f"  bare, 1 thread:                 {one:7.1f} s")
    print(f"  bare, {cores} threads:                {every:7.1f} s")
    print(f"  bare, 1 process per core:       {loops:7.1f} s  (whole, with start-up: "
          f"{loops_whole:.1f} s)")
    for name, (whole, rounds_s) in runs.items():
        print(f"  fleetsim, {name}:")
        print(f"    whole process: {whole:7.1f} s = {whole / limit:.2f}x the limit, "
              f"{whole / loops_whole:.2f}x the whole bare processes")
        print(f"    rounds only:   {rounds_s:7.1f} s = {rounds_s / limit:.2f}x the limit")
        print(f"    fixed cost (start-up, evaluations, shutdown): {whole - rounds_s:.1f} s")


if __name__ == "__main__":
    main()
