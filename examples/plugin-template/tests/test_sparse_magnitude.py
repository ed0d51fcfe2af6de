"""The plugin's own tests: autoslm's conformance kit, plus what is specific to this technique."""

from __future__ import annotations

import torch

from autoslm.models import load_model
from autoslm.plugins import get_registry
from autoslm.technique import ApplyContext
from autoslm.testing import TechniqueConformance


class TestConformance(TechniqueConformance):
    technique = "sparse.magnitude"
    example_params = [{"sparsity": 0.5}, {"sparsity": 0.3, "score": "wanda"}]
    invalid_params = [{"sparsity": 1.0}, {"score": "random"}, {"targets": []}]


def _apply(params: dict) -> tuple[torch.nn.Module, torch.nn.Module]:
    cls = get_registry().technique("sparse.magnitude").cls
    lm, original = load_model("tiny-llama"), load_model("tiny-llama")
    ctx = ApplyContext(tokenizer=lm.tokenizer, seed=0)
    return cls().apply(lm.model, cls.make_config(params), ctx), original.model


def test_zeroes_the_requested_share_of_each_row() -> None:
    model, _ = _apply({"sparsity": 0.5})
    w = model.model.layers[0].mlp.down_proj.weight
    assert ((w == 0).sum(1) == w.shape[1] // 2).all()
    untouched = model.model.layers[0].self_attn.q_proj.weight  # not a default target
    assert (untouched != 0).all()


def test_magnitude_keeps_the_largest_weights() -> None:
    model, original = _apply({"sparsity": 0.25})
    w, w0 = model.model.layers[1].mlp.up_proj.weight, original.model.layers[1].mlp.up_proj.weight
    for row in range(w.shape[0]):  # in every row, each kept weight is at least as large as each dropped one
        assert w0[row][w[row] != 0].abs().min() >= w0[row][w[row] == 0].abs().max()
    assert torch.equal(w[w != 0], w0[w != 0])  # kept weights are unchanged


def test_wanda_uses_activations_and_differs_from_magnitude() -> None:
    a, _ = _apply({"sparsity": 0.5, "score": "magnitude"})
    b, _ = _apply({"sparsity": 0.5, "score": "wanda"})
    wa, wb = a.model.layers[0].mlp.gate_proj.weight, b.model.layers[0].mlp.gate_proj.weight
    assert (wa == 0).sum() == (wb == 0).sum()
    assert not torch.equal(wa == 0, wb == 0)
