"""Pretraining the zoo on the server's public corpus (held-out plays), once, cached.

A pretrained model lives in `<cache>/zoo/<name>/` (save_pretrained, safetensors),
written to a temporary folder and renamed, so an interrupted pretraining leaves nothing
half-written. Deterministic: seed 0, fixed steps.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fleetsim.cache import cache_root
from fleetsim.data import server_corpus
from fleetsim.model import ZOO, TinyGPT, ZooEntry, layer_groups
from fleetsim.training import loss_of_step, model_state
from fleetsim.types import ModelState, TrainingPlan

log = logging.getLogger(__name__)
Progress = Callable[[int, int, float], None]  # (step, total, loss)
PRETRAIN_SEQ_LEN = 80
RECIPE_FILE = "pretrain.json"
PRETRAIN_THREADS = 2


def zoo_dir() -> Path:
    return cache_root() / "zoo"


def recipe(entry: ZooEntry) -> dict[str, float | int | str]:
    """How a zoo model was pretrained; a cached copy made another way is stale."""
    return {"steps": entry.pretrain_steps, "lr": entry.pretrain_lr,
            "batch": entry.pretrain_batch, "seq_len": PRETRAIN_SEQ_LEN, "corpus": "server-v1",
            "threads": PRETRAIN_THREADS}


def is_cached(name: str) -> bool:
    stamp = zoo_dir() / name / RECIPE_FILE
    return stamp.is_file() and json.loads(stamp.read_text()) == recipe(ZOO[name])


def load_pretrained(name: str, on_progress: Progress | None = None) -> ModelState:
    """The pretrained weights of zoo model `name`, pretraining first if not cached."""
    if name not in ZOO:
        raise KeyError(name)
    if not is_cached(name):
        pretrain(ZOO[name], on_progress)
    model = TinyGPT.from_pretrained(zoo_dir() / name)
    return model_state(model)


def pretrain(entry: ZooEntry, on_progress: Progress | None = None) -> Path:
    """Train `entry` from scratch on the server corpus and cache it. Always on the same
    number of threads: the cached weights must not depend on the machine's cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(PRETRAIN_THREADS)
    try:
        return _pretrain(entry, on_progress)
    finally:
        torch.set_num_threads(threads)


def _pretrain(entry: ZooEntry, on_progress: Progress | None) -> Path:
    torch.manual_seed(0)
    model = TinyGPT(entry.config)
    corpus = server_corpus()
    rng = np.random.default_rng(0)
    full = TrainingPlan(train=tuple(layer_groups(entry.config.n_layer)), frozen=(),
                        local_steps=entry.pretrain_steps, batch_size=entry.pretrain_batch,
                        lr=entry.pretrain_lr)
    optimizer = torch.optim.AdamW(model.parameters(), lr=entry.pretrain_lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=entry.pretrain_lr, total_steps=entry.pretrain_steps, pct_start=0.1)
    model.train()
    for step in range(entry.pretrain_steps):
        starts = rng.integers(0, len(corpus) - PRETRAIN_SEQ_LEN - 1, size=entry.pretrain_batch)
        batch = np.stack([corpus[s:s + PRETRAIN_SEQ_LEN + 1] for s in starts])
        loss = loss_of_step(model, full, torch.from_numpy(batch.astype(np.int64)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if on_progress:
            on_progress(step + 1, entry.pretrain_steps, loss.item())
    return _save(model, entry.name)


def _save(model: TinyGPT, name: str) -> Path:
    target = zoo_dir() / name
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
    model.save_pretrained(staging)
    (staging / RECIPE_FILE).write_text(json.dumps(recipe(ZOO[name])))
    if is_cached(name):  # another process won the race; keep its copy
        shutil.rmtree(staging)
        return target
    if target.exists():  # a stale recipe
        shutil.rmtree(target)
    os.replace(staging, target)
    log.info("pretrained %s cached in %s", name, target)
    return target
