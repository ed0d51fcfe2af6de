from __future__ import annotations

from pathlib import Path

import pytest
import torch

from autoslm import checkpoint
from autoslm.errors import UserError
from autoslm.evaluate import Fidelity, perplexity
from autoslm.models import fingerprint, load_model
from autoslm.plugins import Registry
from autoslm.technique import ApplyContext


@pytest.fixture
def width():
    return Registry().load().technique("prune.width").cls


def test_shapes_config_and_reload(width, fresh_tiny, tmp_path: Path) -> None:
    model, tok = fresh_tiny.model, fresh_tiny.tokenizer
    before = sum(p.numel() for p in model.parameters())
    out = width().apply(model, width.make_config({"mlp_ratio": 0.5, "heads_per_group": 1}), ApplyContext(tokenizer=tok))
    layer = out.model.layers[0]
    assert out.config.intermediate_size == 96  # 192 * 0.5, multiple of 8
    assert layer.mlp.gate_proj.weight.shape == (96, 64) and layer.mlp.down_proj.weight.shape == (64, 96)
    # 4 query heads in 2 kv groups -> one removed per group; kv heads untouched
    assert out.config.num_attention_heads == 2 and out.config.num_key_value_heads == 2
    assert layer.self_attn.q_proj.weight.shape == (2 * 16, 64) and layer.self_attn.o_proj.weight.shape == (64, 32)
    assert layer.self_attn.k_proj.weight.shape == (2 * 16, 64)
    assert sum(p.numel() for p in out.parameters()) < before
    assert out.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False).shape == (1, 7)
    checkpoint.save_dir(out, tok, tmp_path / "w")
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "w")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        assert torch.allclose(reloaded(ids).logits, out(ids).logits, atol=1e-5)


def test_deterministic_for_seed(width) -> None:
    prints = []
    for _ in range(2):
        lm = load_model("tiny-llama")
        cfg = width.make_config({"mlp_ratio": 0.25, "importance": "random"})
        width().apply(lm.model, cfg, ApplyContext(tokenizer=lm.tokenizer, seed=3))
        prints.append(fingerprint(lm.model))
    assert prints[0] == prints[1]


def test_invalid_configs(width, fresh_tiny) -> None:
    with pytest.raises(UserError, match="mlp_ratio"):
        width.make_config({"mlp_ratio": 1.5})
    with pytest.raises(UserError, match="importance"):
        width.make_config({"importance": "vibes"})
    with pytest.raises(UserError, match="would leave no query head"):
        width().apply(
            fresh_tiny.model, width.make_config({"heads_per_group": 2}), ApplyContext(tokenizer=fresh_tiny.tokenizer)
        )


def test_space_is_gqa_aware(width) -> None:
    space = width.space({"num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576})  # SmolLM2
    assert space["heads_per_group"].choices == (0, 1, 2)
    # Gemma-3-270M: 4 heads, 1 kv head, hidden 640: 3 heads left would not divide 640, transformers refuses it
    space = width.space({"num_attention_heads": 4, "num_key_value_heads": 1, "hidden_size": 640})
    assert space["heads_per_group"].choices == (0, 2, 3)


@pytest.mark.real
def test_activation_importance_beats_magnitude_on_real_model(width) -> None:
    fid = Fidelity(ppl_tokens=1024)
    ppl = {}
    for importance in ("activation", "magnitude"):
        lm = load_model("smollm2-135m")
        cfg = width.make_config({"mlp_ratio": 0.2, "importance": importance, "calibration_samples": 4})
        width().apply(lm.model, cfg, ApplyContext(tokenizer=lm.tokenizer))
        ppl[importance] = perplexity(lm.model, lm.tokenizer, fid)
    assert ppl["activation"] < 100 < 1000 < ppl["magnitude"]  # measured: ~61 vs ~670,000 at 2k tokens
