"""Pretraining: to convergence on the poems, the best validation weights kept, stamped."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fleetsim.zoo import pretrain
from fleetsim.zoo.model import ZOO, TinyGPT, TinyGPTConfig, ZooEntry


@pytest.fixture
def tiny_zoo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ZooEntry:
    """A one-block model in a zoo of its own, cached under tmp_path, on a fake corpus whose
    validation text differs from its training text, so validation loss turns up."""
    entry = ZooEntry("gpt-1x16", TinyGPTConfig(n_layer=1, n_embd=16, n_head=2),
                     pretrain_steps=60, pretrain_lr=3e-2, pretrain_batch=8)
    monkeypatch.setitem(ZOO, entry.name, entry)
    monkeypatch.setenv("FLEETSIM_CACHE", str(tmp_path))
    monkeypatch.setattr(pretrain, "EVAL_EVERY", 10)
    monkeypatch.setattr(pretrain, "EVAL_WINDOWS", 8)
    rng = np.random.default_rng(0)
    train = np.tile(np.arange(3, 13, dtype=np.uint8), 100)  # a cycle of 10 characters
    validation = rng.integers(3, 90, 400).astype(np.uint8)  # noise: overfitting shows
    monkeypatch.setattr(pretrain, "server_corpus", lambda: (train, validation))
    monkeypatch.setattr(pretrain, "reserved_plays", lambda: validation)
    return entry


def test_pretraining_keeps_the_best_validation_weights(tiny_zoo: ZooEntry) -> None:
    pretrain.pretrain(tiny_zoo)
    record = pretrain.pretrain_record(tiny_zoo.name)
    assert record is not None and pretrain.is_cached(tiny_zoo.name)
    steps, losses = zip(*record["curve"], strict=True)
    assert steps[0] == 10 and list(steps) == sorted(steps)
    assert record["best_step"] == steps[int(np.argmin(losses))]
    # the kept weights are the best ones, not the last ones
    model = TinyGPT.from_pretrained(pretrain.zoo_dir() / tiny_zoo.name)
    held_out = pretrain.windows(pretrain.server_corpus()[1], pretrain.EVAL_WINDOWS)
    assert pretrain.scores(model, held_out)["loss"] == pytest.approx(min(losses), abs=1e-3)
    assert record["validation"]["loss"] == pytest.approx(min(losses), abs=1e-3)
    # converged: stopped PATIENCE evaluations after the best, before the step limit
    assert steps[-1] == min(record["best_step"] + pretrain.PATIENCE * 10,
                            tiny_zoo.pretrain_steps)


def test_a_cached_model_of_another_recipe_is_stale(tiny_zoo: ZooEntry) -> None:
    pretrain.pretrain(tiny_zoo)
    stamp = pretrain.zoo_dir() / tiny_zoo.name / pretrain.RECIPE_FILE
    record = json.loads(stamp.read_text())
    stamp.write_text(json.dumps({**record, "recipe": {**record["recipe"], "lr": 1.0}}))
    assert not pretrain.is_cached(tiny_zoo.name) and pretrain.pretrain_record(
        tiny_zoo.name) is None
    stamp.write_text("{not json")
    assert not pretrain.is_cached(tiny_zoo.name)


def test_a_cached_model_is_loaded_without_training_until_its_recipe_changes(
        tiny_zoo: ZooEntry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = replace(tiny_zoo, pretrain_steps=6)  # a few steps: only the caching counts
    monkeypatch.setitem(ZOO, entry.name, entry)
    monkeypatch.setattr(pretrain, "EVAL_EVERY", 3)
    trained: list[float] = []  # the learning rate of each pretraining that ran
    train = pretrain._pretrain

    def counted(entry: ZooEntry, on_progress: pretrain.Progress | None) -> Path:
        trained.append(entry.pretrain_lr)
        return train(entry, on_progress)

    monkeypatch.setattr(pretrain, "_pretrain", counted)
    first = pretrain.load_pretrained(entry.name)
    assert trained == [3e-2]  # nothing cached: pretrained once, into our own cache
    folder = tmp_path / "zoo" / entry.name
    assert (folder / pretrain.RECIPE_FILE).is_file()
    second = pretrain.load_pretrained(entry.name)
    assert trained == [3e-2]  # cached: loaded, not trained again
    assert first.keys() == second.keys()
    assert all(np.array_equal(first[k], second[k]) for k in first)
    # another recipe (a new learning rate): the stamp no longer matches, it trains again
    monkeypatch.setitem(ZOO, entry.name, replace(entry, pretrain_lr=1e-2))
    third = pretrain.load_pretrained(entry.name)
    assert trained == [3e-2, 1e-2]
    assert not all(np.array_equal(first[k], third[k]) for k in first)
    assert json.loads((folder / pretrain.RECIPE_FILE).read_text())["recipe"]["lr"] == 1e-2
    assert all(np.array_equal(third[k], v)
               for k, v in pretrain.load_pretrained(entry.name).items())
    assert trained == [3e-2, 1e-2]  # and the new one is reused
    # a recipe constant of the module (patience) is part of the stamp too
    monkeypatch.setattr(pretrain, "PATIENCE", pretrain.PATIENCE + 1)
    pretrain.load_pretrained(entry.name)
    assert trained == [3e-2, 1e-2, 1e-2]
    assert [p.name for p in (tmp_path / "zoo").iterdir()] == [entry.name]  # no leftovers
