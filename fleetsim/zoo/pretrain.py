"""Pretraining the zoo on the server's public corpus (the Sonnets), once, cached.

A pretrained model lives in `<cache>/zoo/<name>/` (save_pretrained, safetensors) with
`pretrain.json`: the recipe it was made with and its validation curve. It is written to a
temporary folder and renamed, so an interrupted pretraining leaves nothing half-written.

The recipe trains to convergence: AdamW with a one-cycle schedule for at most
`pretrain_steps`, the held-out sonnets evaluated every EVAL_EVERY steps, the weights of the
lowest validation loss kept, and training stopped once PATIENCE evaluations in a row
found no lower loss. So a larger model starts at least as well as a smaller one, instead
of worse for being further from convergence. Deterministic: seed 0, fixed threads.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fleetsim.device.training import accuracy_and_loss, evaluate, loss_of_step, model_state
from fleetsim.types import ModelState, TrainingPlan
from fleetsim.zoo.cache import cache_root
from fleetsim.zoo.data import reserved_plays, server_corpus
from fleetsim.zoo.model import ZOO, TinyGPT, ZooEntry, layer_groups

log = logging.getLogger(__name__)
Progress = Callable[[int, int, float], None]  # (step, total, loss)
PRETRAIN_SEQ_LEN = 80
RECIPE_FILE = "pretrain.json"
PRETRAIN_THREADS = 2
EVAL_EVERY = 200  # steps between evaluations of the held-out sonnets
PATIENCE = 3  # evaluations without a lower validation loss before stopping
EVAL_WINDOWS = 400  # held-out windows evaluated (validation sonnets, reserved plays)


def zoo_dir() -> Path:
    return cache_root() / "zoo"


def recipe(entry: ZooEntry) -> dict[str, float | int | str]:
    """How a zoo model was pretrained; a cached copy made another way is stale."""
    return {"max_steps": entry.pretrain_steps, "lr": entry.pretrain_lr,
            "batch": entry.pretrain_batch, "seq_len": PRETRAIN_SEQ_LEN,
            "corpus": "server-v2-sonnets", "threads": PRETRAIN_THREADS,
            "eval_every": EVAL_EVERY, "patience": PATIENCE}


def pretrain_record(name: str) -> dict[str, Any] | None:
    """What `pretrain.json` says of a cached model made with today's recipe, else None:
    recipe, curve [(step, validation loss)], best_step, and the kept weights' loss and
    accuracy on the validation sonnets and on the reserved plays."""
    stamp = zoo_dir() / name / RECIPE_FILE
    try:
        record = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("recipe") == recipe(ZOO[name]) else None


def is_cached(name: str) -> bool:
    return pretrain_record(name) is not None


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


def windows(ids: np.ndarray, count: int) -> np.ndarray:
    """`count` windows of PRETRAIN_SEQ_LEN + 1 ids spread evenly over `ids`."""
    starts = np.linspace(0, len(ids) - PRETRAIN_SEQ_LEN - 1, count).astype(np.int64)
    return np.stack([ids[s:s + PRETRAIN_SEQ_LEN + 1] for s in starts])


def scores(model: TinyGPT, held_out: np.ndarray) -> dict[str, float]:
    """Loss and next-character accuracy on `held_out` windows; the model stays in train mode."""
    result = accuracy_and_loss([evaluate(model, held_out)])
    model.train()
    return result


def _pretrain(entry: ZooEntry, on_progress: Progress | None) -> Path:
    torch.manual_seed(0)
    model = TinyGPT(entry.config)
    train, validation = server_corpus()
    held_out = windows(validation, EVAL_WINDOWS)
    rng = np.random.default_rng(0)
    full = TrainingPlan(train=tuple(layer_groups(entry.config.n_layer)), frozen=(),
                        local_steps=entry.pretrain_steps, batch_size=entry.pretrain_batch,
                        lr=entry.pretrain_lr)
    optimizer = torch.optim.AdamW(model.parameters(), lr=entry.pretrain_lr, weight_decay=0.1,
                                  betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=entry.pretrain_lr, total_steps=entry.pretrain_steps, pct_start=0.05)
    curve: list[tuple[int, float]] = []
    best: dict[str, Any] = {"loss": float("inf")}
    model.train()
    for step in range(1, entry.pretrain_steps + 1):
        starts = rng.integers(0, len(train) - PRETRAIN_SEQ_LEN - 1, size=entry.pretrain_batch)
        batch = np.stack([train[s:s + PRETRAIN_SEQ_LEN + 1] for s in starts])
        loss = loss_of_step(model, full, torch.from_numpy(batch.astype(np.int64)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if on_progress:
            on_progress(step, entry.pretrain_steps, loss.item())
        if step % EVAL_EVERY and step != entry.pretrain_steps:
            continue
        curve.append((step, round(scores(model, held_out)["loss"], 4)))
        if curve[-1][1] < best["loss"]:
            best = {"loss": curve[-1][1], "step": step, "state": copy.deepcopy(
                model.state_dict())}
        elif step - best["step"] >= PATIENCE * EVAL_EVERY:
            break  # converged: no lower validation loss for PATIENCE evaluations
    model.load_state_dict(best["state"])
    record = {"recipe": recipe(entry), "curve": curve, "best_step": best["step"],
              "validation": scores(model, held_out),
              "reserved_plays": scores(model, windows(reserved_plays(), EVAL_WINDOWS))}
    log.info("pretrained %s: validation loss %.3f at step %d", entry.name, best["loss"],
             best["step"])
    return _save(model, entry.name, record)


def _save(model: TinyGPT, name: str, record: dict[str, Any]) -> Path:
    target = zoo_dir() / name
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
    model.save_pretrained(staging)
    (staging / RECIPE_FILE).write_text(json.dumps(record, indent=1))
    if is_cached(name):  # another process won the race; keep its copy
        shutil.rmtree(staging)
        return target
    if target.exists():  # a stale recipe
        shutil.rmtree(target)
    os.replace(staging, target)
    log.info("pretrained %s cached in %s", name, target)
    return target
