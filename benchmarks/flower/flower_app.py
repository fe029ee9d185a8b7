"""The Flower apps of benchmarks/vs_flower.py (a module, so Ray's workers can import
it): the same model (the pretrained gpt-4x128 from fleetsim's cache), the same clients
(fleetsim.zoo.data), the same local steps; Flower samples the clients."""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fleetsim.zoo.cache import cache_root
from fleetsim.zoo.data import build_federated
from fleetsim.zoo.model import TinyGPT

CLIENTS, PER_ROUND, STEPS, BATCH, LR = 20, 5, 10, 32, 0.05


@lru_cache(maxsize=1)
def clients():  # type: ignore[no-untyped-def]
    return build_federated(CLIENTS, 0, min_train_samples=32).clients


@lru_cache(maxsize=1)
def pretrained() -> TinyGPT:
    """One model per process, loaded with each message's arrays (as fleetsim's hosts)."""
    return TinyGPT.from_pretrained(cache_root() / "zoo" / "gpt-4x128")


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    data = clients()[int(context.node_config["partition-id"])].train.astype(np.int64)
    model = pretrained()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    rng = np.random.default_rng(int(context.node_config["partition-id"]))
    tokens = torch.from_numpy(data)
    model.train()
    for _ in range(STEPS):
        batch = tokens[rng.integers(0, len(tokens), BATCH)]
        optimizer.zero_grad(set_to_none=True)
        model(batch[:, :-1], labels=batch[:, 1:]).loss.backward()
        optimizer.step()
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"num-examples": len(data)})})
    return Message(content=content, reply_to=msg)


server_app = ServerApp()
RESULT: dict[str, float] = {}


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    rounds = int(os.environ["FLOWER_ROUNDS"])
    model = pretrained()
    strategy = FedAvg(fraction_train=PER_ROUND / CLIENTS, fraction_evaluate=0.0,
                      min_train_nodes=PER_ROUND, min_available_nodes=CLIENTS)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                            num_rounds=rounds)
    model.load_state_dict(result.arrays.to_torch_state_dict())
    RESULT["accuracy"] = accuracy(model)


@torch.no_grad()
def accuracy(model: TinyGPT) -> float:
    windows = np.concatenate([c.test for c in clients()]).astype(np.int64)
    model.eval()
    correct = positions = 0
    for start in range(0, len(windows), 64):
        tokens = torch.from_numpy(windows[start:start + 64])
        logits = model(tokens[:, :-1]).logits
        correct += int((logits.argmax(-1) == tokens[:, 1:]).sum())
        positions += tokens[:, 1:].numel()
    return correct / positions
