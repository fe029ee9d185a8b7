"""The model zoo: transformers conventions, layer groups, pretraining cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fleetsim.device.training import loss_of_step, model_state, scratch_state
from fleetsim.types import TrainingPlan
from fleetsim.zoo.model import ARCHITECTURES, ZOO, TinyGPT, group_of, layer_groups


def test_zoo_models_differ_in_depth_and_width() -> None:
    # (blocks, width, heads) as the docs use them: the pretrained family grows in depth
    # and width together (CAFF's scores in tests/test_findings.py count 2, 4, 6 and 8
    # blocks), 4 heads in gpt-4x128, and gpt-8x64 is 8 blocks of 8 heads of 8 (README)
    assert ARCHITECTURES == ("gpt-2x64", "gpt-4x128", "gpt-6x192", "gpt-8x256")
    assert {n: (e.config.n_layer, e.config.n_embd, e.config.n_head) for n, e in ZOO.items()} \
        == {"gpt-2x64": (2, 64, 4), "gpt-4x128": (4, 128, 4), "gpt-6x192": (6, 192, 6),
            "gpt-8x256": (8, 256, 8), "gpt-8x64": (8, 64, 8)}


def test_fine_grained_entry_has_many_thin_blocks() -> None:
    cfg = ZOO["gpt-8x64"].config
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.head_size) == (8, 64, 8, 8)
    assert "gpt-8x64" not in ARCHITECTURES  # CAFF and small_model keep their candidates
    assert sum(p.numel() for p in TinyGPT(cfg).parameters()) < 500_000  # cheap from scratch


def test_scratch_weights_follow_the_seed_and_leave_torch_alone() -> None:
    cfg = ZOO["gpt-2x64"].config
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    a, b, c = scratch_state(cfg, 1), scratch_state(cfg, 1), scratch_state(cfg, 2)
    assert torch.equal(torch.rand(3), expected)  # the global generator is untouched
    assert all((a[k] == b[k]).all() for k in a)
    assert not (a["lm_head.weight"] == c["lm_head.weight"]).all()
    assert abs(float(a["lm_head.weight"].std()) - 0.02) < 0.002  # TinyGPT's own init


@pytest.mark.parametrize("name", list(ZOO))
def test_every_parameter_belongs_to_a_layer_group(name: str) -> None:
    cfg = ZOO[name].config
    assert name == f"gpt-{cfg.n_layer}x{cfg.n_embd}"
    with torch.device("meta"):
        model = TinyGPT(cfg)
    groups = {group_of(k) for k in model.state_dict()}
    assert groups == set(layer_groups(cfg.n_layer))


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyGPT(ZOO["gpt-2x64"].config)
    model.save_pretrained(tmp_path)
    loaded = TinyGPT.from_pretrained(tmp_path)
    tokens = torch.randint(0, model.config.vocab_size, (2, 17))
    assert torch.equal(model(tokens).logits, loaded(tokens).logits)


def test_group_forward_equals_model_forward() -> None:
    """The step devices run (group by group) computes the model's own loss."""
    torch.manual_seed(0)
    model = TinyGPT(ZOO["gpt-2x64"].config)
    tokens = torch.randint(0, model.config.vocab_size, (3, 21))
    groups = tuple(layer_groups(2))
    plan = TrainingPlan(train=groups[-2:], frozen=groups[:-2], local_steps=1, batch_size=3,
                        lr=0.1)
    want = model(tokens[:, :-1], labels=tokens[:, 1:]).loss
    assert torch.allclose(loss_of_step(model, plan, tokens), want)


def test_frozen_prefix_gets_no_gradient() -> None:
    model = TinyGPT(ZOO["gpt-2x64"].config)
    from fleetsim.device.training import prepare_model

    plan = TrainingPlan(train=("head",), frozen=("embed", "block.0", "block.1"),
                        local_steps=1, batch_size=2, lr=0.1)
    prepare_model(model, plan)
    loss_of_step(model, plan, torch.randint(0, 90, (2, 9))).backward()
    grads = {group_of(n) for n, p in model.named_parameters() if p.grad is not None}
    assert grads == {"head"}


def test_model_state_is_float32_numpy_copy() -> None:
    model = TinyGPT(ZOO["gpt-2x64"].config)
    state = model_state(model)
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert set(state) == set(params)
    for k, v in state.items():  # the model's own values, as float32 numpy arrays
        assert isinstance(v, np.ndarray) and v.dtype == np.float32, k
        np.testing.assert_array_equal(v, params[k].numpy(), err_msg=k)
    state["lm_head.weight"][:] = 0  # a copy: writing to it leaves the model as it was
    assert torch.equal(model.lm_head.weight, params["lm_head.weight"])
