"""fleetsim against Flower's simulation engine on the same FedAvg job, side by side in
one run: gpt-4x128 (pretrained, from fleetsim's cache), 20 clients of the Shakespeare
partition, 5 a round, 10 rounds of 10 local SGD steps at batch 32, on Ray with one CPU
per client/host. Flower runs in its own environment (`.venv-flower`, made from
benchmarks/flower/requirements.txt: flwr pins its own Ray).

    python3 -m venv .venv-flower
    .venv-flower/bin/pip install -r benchmarks/flower/requirements.txt
    .venv/bin/python benchmarks/vs_flower.py [--rounds 10]

fleetsim runs twice: with its default pool (one single-thread host per core, like Flower's
one CPU per client) and with one host training on every core. Prints each whole
process's wall time and the peak resident memory of its process tree (sampled every
0.2 s), their ratios, and the final accuracies on all the clients' test windows (a
correctness cross-check: they should agree within noise).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from overhead import SCENARIO, VARIANTS  # the same job (this folder is on the path of a script)

ROOT = Path(__file__).resolve().parent.parent


def tree_rss(root: int) -> int:
    """Resident bytes of a process and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            statm = Path(f"/proc/{entry}/statm").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = int(statm.split()[1]) * 4096
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total


def measured(command: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """(wall seconds, peak tree RSS bytes) of a command."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.2)
    if proc.returncode:
        raise SystemExit(f"{command[:3]} failed:\n{proc.stderr.read()[-3000:]}")  # type: ignore[union-attr]
    return time.perf_counter() - start, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    flower_python = ROOT / ".venv-flower" / "bin" / "python"
    if not flower_python.exists():
        raise SystemExit("make Flower's environment first (see this file's docstring)")
    with tempfile.TemporaryDirectory() as tmp:
        ours = {name: fleetsim_job(Path(tmp) / name, args.rounds, workers)
                for name, workers in VARIANTS.items()}
        result = Path(tmp) / "flower.json"
        env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'benchmarks' / 'flower'}"}
        wall, peak = measured([str(flower_python), str(ROOT / "benchmarks" / "flower" / "job.py"),
                               str(args.rounds), str(result)], env)
        flower = json.loads(result.read_text())
    print(f"FedAvg, gpt-4x128, 20 clients, 5 a round, {args.rounds} rounds x 10 steps")
    print(f"  Flower:   {wall:6.1f} s, peak {peak / 2**20:.0f} MiB, "
          f"final accuracy {flower['accuracy']:.4f}")
    for name, (our_wall, our_peak, accuracy) in ours.items():
        print(f"  fleetsim, {name}: {our_wall:6.1f} s, peak {our_peak / 2**20:.0f} MiB, "
              f"final accuracy {accuracy:.4f}")
        print(f"    wall time {our_wall / wall:.2f}x Flower's (goal 0.90x), peak memory "
              f"{our_peak / peak:.2f}x (goal 0.75x)")


def fleetsim_job(tmp: Path, rounds: int, workers: str) -> tuple[float, int, float]:
    """(wall seconds, peak tree RSS bytes, final accuracy) of the job in fleetsim."""
    tmp.mkdir()
    source, out = tmp / "job.yaml", tmp / "out"
    source.write_text(SCENARIO.format(rounds=rounds, samples=1_000_000)
                      + f"workers: {workers}\n")
    wall, peak = measured([sys.executable, "-m", "fleetsim", "run", str(source), "--no-live",
                           "--out", str(out)])
    return wall, peak, json.loads((out / "summary.json").read_text())["final_accuracy"]


if __name__ == "__main__":
    main()
