"""fleetsim from Python: run the smoke scenario under two policies, read the records
back, and print what each policy did.

    .venv/bin/python examples/compare_policies.py [OUT]
"""

import sys
from pathlib import Path

import fleetsim

ROOT = Path(__file__).resolve().parent.parent
out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "runs" / "example"

# one run, with overrides as keywords (training__lr is training.lr)
result = fleetsim.run(ROOT / "scenarios" / "smoke.yaml", out=out / "fedavg", rounds=2,
                      training__lr=1e-4, workers__backend="local", progress="none")
print(f"fedavg: {result.summary['initial_accuracy']:.4f} -> "
      f"{result.summary['final_accuracy']:.4f} in {len(result.rounds)} rounds")

# the same scenario under several policies, side by side
comparison = fleetsim.compare(ROOT / "scenarios" / "smoke.yaml", ["head_only", "lora"],
                              out=out / "compare", rounds=2, workers__backend="local",
                              progress="none")
for row in comparison.rows:
    print(f"{row['policy']}: final accuracy {row['final_accuracy']:.4f}, "
          f"{row['mb_up']:.2f} MB up")

# any run directory reads back the same way
again = fleetsim.load_run(out / "fedavg")
assert again.rounds == result.rounds
oom = sum(d["status"] == "oom" for d in again.devices)
print(f"device records: {len(again.devices)}, out of memory: {oom}")
