"""The FedAvg job of benchmarks/vs_flower.py in Flower's simulation engine. Runs in its
own environment (`.venv-flower`, see requirements.txt here) with the repo and this
folder on PYTHONPATH.

    .venv-flower/bin/python benchmarks/flower/job.py ROUNDS RESULT.json
"""

from __future__ import annotations

import json
import os
import sys
import time

from flower_app import CLIENTS, RESULT, client_app, server_app
from flwr.simulation import run_simulation

if __name__ == "__main__":
    os.environ["FLOWER_ROUNDS"] = sys.argv[1]
    start = time.perf_counter()
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=CLIENTS,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    RESULT["inner_wall_s"] = time.perf_counter() - start
    with open(sys.argv[2], "w") as handle:
        json.dump(RESULT, handle)
