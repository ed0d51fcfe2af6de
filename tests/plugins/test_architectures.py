"""Built-in techniques on each supported architecture family (a tiny random Llama and a tiny random Gemma-3): what
differs between them (norm conventions, which norm feeds the MLP, sliding-window layers, the heads a config
accepts) is exercised here; the conformance kit runs on both too (test_conformance.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from autoslm import checkpoint
from autoslm.errors import UserError
from autoslm.models import fingerprint, load_model, model_info
from autoslm.plugins import Registry
from autoslm.technique import ApplyContext

IDS = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
FAMILIES = ("tiny-llama", "tiny-gemma3")


def _logits(model) -> torch.Tensor:
    with torch.inference_mode():
        return model(IDS).logits.float()


def _technique(name: str):
    return Registry().load().technique(name).cls


def test_tiny_gemma3_is_a_gemma3_with_its_norm_convention() -> None:
    from autoslm.modeling import block_norms, norm_offset

    gemma, llama = load_model("tiny-gemma3").model, load_model("tiny-llama").model
    assert type(gemma).__name__ == "Gemma3ForCausalLM" and gemma.config.num_key_value_heads == 1
    assert gemma.config.layer_types.count("full_attention") == 1  # five sliding-window layers, then a global one
    layer = gemma.model.layers[0]
    assert block_norms(layer) == (layer.input_layernorm, layer.pre_feedforward_layernorm)
    assert norm_offset(layer.input_layernorm) == 1.0  # x * (1 + w)
    assert norm_offset(llama.model.layers[0].input_layernorm) == 0.0  # x * w
    assert block_norms(llama.model.layers[0])[1] is llama.model.layers[0].post_attention_layernorm
    before = layer.input_layernorm.weight.clone()
    norm_offset(layer.input_layernorm)
    assert torch.equal(layer.input_layernorm.weight, before)  # the probe restores the weight


@pytest.mark.parametrize("family", FAMILIES)
def test_smoothing_is_exact_in_fp32_on_every_family(family: str) -> None:
    from autoslm_plugins.quant_dynamic import smooth

    lm = load_model(family)
    before = _logits(lm.model)
    smooth(lm.model, ApplyContext(tokenizer=lm.tokenizer).calibration(2, 64), alpha=0.5)
    after = _logits(lm.model)
    assert torch.allclose(after, before, atol=1e-4 * float(before.abs().max()))
    # and it did something: the norms feeding the projections changed
    untouched = load_model(family).model.model.layers[0].input_layernorm.weight
    assert not torch.equal(lm.model.model.layers[0].input_layernorm.weight, untouched)


def test_smoothing_the_wrong_norm_would_be_caught() -> None:
    """The check above can fail: dividing Gemma's weights the Llama way changes the logits."""
    lm = load_model("tiny-gemma3")
    before = _logits(lm.model)
    with torch.no_grad():
        lm.model.model.layers[0].input_layernorm.weight.div_(2.0)  # x*(1+w/2) != x*(1+w)/2
        for lin in (lm.model.model.layers[0].self_attn.q_proj, lm.model.model.layers[0].self_attn.k_proj,
                    lm.model.model.layers[0].self_attn.v_proj):  # fmt: skip
            lin.weight.mul_(2.0)
    assert not torch.allclose(_logits(lm.model), before, atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_depth_pruning_runs_the_models_own_layers(family: str, tmp_path: Path) -> None:
    depth = _technique("prune.depth")
    lm = load_model(family)
    n = lm.model.config.num_hidden_layers
    scores = depth().block_importance(lm.model, depth.make_config({}), ApplyContext(tokenizer=lm.tokenizer))
    assert len(scores) == n and all(0 <= s <= 2 for s in scores)
    # the hooks see what the model's own hidden states say: block i's input is hidden_states[i]
    windows = ApplyContext(tokenizer=lm.tokenizer).calibration(8, 256)
    with torch.inference_mode():
        hidden = lm.model(input_ids=windows, output_hidden_states=True, use_cache=False).hidden_states
    for i in range(n - 1):
        sim = torch.nn.functional.cosine_similarity(hidden[i].float(), hidden[i + 1].float(), dim=-1).mean()
        assert scores[i] == pytest.approx(1.0 - float(sim), abs=1e-5)
    out = depth().apply(lm.model, depth.make_config({"blocks": 2}), ApplyContext(tokenizer=lm.tokenizer))
    assert out.config.num_hidden_layers == n - 2
    types = getattr(out.config, "layer_types", None)
    assert types is None or len(types) == n - 2
    assert out.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False).shape == (1, 7)
    directory = checkpoint.save_dir(out, lm.tokenizer, tmp_path / "pruned")
    assert torch.equal(_logits(checkpoint.load_model(directory)), _logits(out))


def test_width_pruning_offers_only_head_counts_gemma_accepts(tmp_path: Path) -> None:
    width = _technique("prune.width")
    lm = load_model("tiny-gemma3")
    info = model_info(lm.model)
    assert width.space(info)["heads_per_group"].choices == (0, 2, 3)  # 4 heads, hidden 64: 3 left is refused
    with pytest.raises(UserError, match=r"leaves 3 query heads.*use one of \(0, 2, 3\)"):
        width().apply(lm.model, width.make_config({"heads_per_group": 1}), ApplyContext(tokenizer=lm.tokenizer))
    out = width().apply(
        lm.model, width.make_config({"heads_per_group": 2, "mlp_ratio": 0.25}), ApplyContext(tokenizer=lm.tokenizer)
    )
    assert out.config.num_attention_heads == 2 and out.config.intermediate_size == 144
    directory = checkpoint.save_dir(out, lm.tokenizer, tmp_path / "w")
    assert torch.equal(_logits(checkpoint.load_model(directory)), _logits(out))


def test_tiny_models_are_deterministic() -> None:
    assert fingerprint(load_model("tiny-gemma3").model) == fingerprint(load_model("tiny-gemma3").model)
    assert fingerprint(load_model("tiny-gemma3").model) != fingerprint(load_model("tiny-llama").model)


def test_llamacpp_refuses_an_architecture_it_cannot_export_in_one_line_before_any_work(tmp_path: Path) -> None:
    """An architecture llama.cpp's converter does not know (a tiny Qwen2 renamed), and then a tokenizer it does not
    recognise (the same Qwen2 under its own name: transformers reads SmolLM2's vocabulary with Qwen2's tokenizer
    class), are refused in one line before anything is loaded or written."""
    from conftest import run_cli
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from autoslm.models import TINY_LLAMA

    torch.manual_seed(0)
    qwen = Qwen2ForCausalLM(Qwen2Config(**{k: v for k, v in TINY_LLAMA.items() if k != "architectures"})).eval()
    directory = tmp_path / "qwen"
    qwen.save_pretrained(directory)
    load_model("tiny-llama").tokenizer.save_pretrained(directory)
    config = json.loads((directory / "config.json").read_text())  # loaded by model_type; llama.cpp knows no such
    (directory / "config.json").write_text(json.dumps({**config, "architectures": ["FancyNewForCausalLM"]}))
    out = tmp_path / "run"
    proc = run_cli("search", "--model", str(directory), "--runtime", "llama.cpp", "--trials", "1", "--out", str(out))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: --runtime llama.cpp: llama.cpp's converter (llama-cpp-python 0.3.36) knows no text architecture "
        "['FancyNewForCausalLM']: use --runtime torch for this model"
    )
    assert not out.exists()  # decided from config.json: nothing loaded, nothing written
    proc = run_cli("eval", "--model", str(directory), "--runtime", "llama.cpp")
    assert proc.returncode != 0 and "knows no text architecture ['FancyNewForCausalLM']" in proc.stderr.splitlines()[-1]
    (directory / "config.json").write_text(json.dumps(config))  # a Qwen2 with SmolLM2's vocabulary: tokenizer refused
    proc = run_cli("search", "--model", str(directory), "--runtime", "llama.cpp", "--trials", "1", "--out", str(out))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "BPE pre-tokenizer was not recognized" in proc.stderr.strip().splitlines()[-1]
    assert not out.exists()
