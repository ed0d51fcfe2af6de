from __future__ import annotations

from pathlib import Path

import pytest
import torch

from autoslm import checkpoint
from autoslm.errors import UserError
from autoslm.models import fingerprint, load_model
from autoslm.plugins import Registry
from autoslm.technique import ApplyContext


@pytest.fixture
def depth():
    return Registry().load().technique("prune.depth").cls


def test_removes_blocks_and_still_generates(depth, fresh_tiny, tmp_path: Path) -> None:
    model, tok = fresh_tiny.model, fresh_tiny.tokenizer
    before = sum(p.numel() for p in model.parameters())
    cfg = depth.make_config({"blocks": 2})
    out = depth().apply(model, cfg, ApplyContext(tokenizer=tok))
    assert out.config.num_hidden_layers == 2 and len(out.model.layers) == 2
    assert [layer.self_attn.layer_idx for layer in out.model.layers] == [0, 1]
    per_block = sum(p.numel() for p in fresh_tiny.model.model.layers[0].parameters())
    assert sum(p.numel() for p in out.parameters()) == before - 2 * per_block
    gen = out.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=5, do_sample=False)
    assert gen.shape == (1, 8)
    # saves and reloads with plain transformers
    checkpoint.save_dir(out, tok, tmp_path / "pruned")
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert reloaded.config.num_hidden_layers == 2
    assert fingerprint(reloaded) == fingerprint(out)


def test_same_seed_same_weights(depth) -> None:
    results = []
    for _ in range(2):
        lm = load_model("tiny-llama")
        depth().apply(lm.model, depth.make_config({"blocks": 1}), ApplyContext(tokenizer=lm.tokenizer, seed=7))
        results.append(fingerprint(lm.model))
    assert results[0] == results[1]


def test_importance_prefers_blocks_that_change_least(depth, tiny) -> None:
    scores = depth().block_importance(tiny.model, depth.make_config({}), ApplyContext(tokenizer=tiny.tokenizer))
    assert len(scores) == 4 and all(0 <= s <= 2 for s in scores)


def test_invalid_configs(depth, fresh_tiny) -> None:
    with pytest.raises(UserError, match="blocks"):
        depth.make_config({"blocks": "many"})
    with pytest.raises(ValueError, match="cannot remove 4 of 4 blocks"):
        depth().apply(fresh_tiny.model, depth.make_config({"blocks": 4}), ApplyContext(tokenizer=fresh_tiny.tokenizer))


def test_space_scales_with_depth(depth) -> None:
    dim = depth.space({"num_layers": 30})["blocks"]
    assert (dim.low, dim.high) == (0, 15)
