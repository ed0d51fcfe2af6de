"""kv.cache_type: llama.cpp's KV cache in fewer bits, recorded in the checkpoint, used wherever the model runs, and
measured: less memory at depth, perplexity on the same windows; bad settings and hostile manifests are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from autoslm import checkpoint
from autoslm.errors import UserError
from autoslm.evaluate import Fidelity
from autoslm.pipeline import Step, apply_planned, plan
from autoslm.runtimes import check_policy, get_runtime
from autoslm.runtimes.llamacpp import CONTEXT_KEY, CacheSettings
from autoslm.targets import MeasureSettings, get_target
from autoslm.targets.local import MeasurementError
from autoslm.technique import ApplyContext

pytest.importorskip("llama_cpp")
FID = Fidelity(ppl_tokens=512, hyperbaton_items=8, cloze_items=8)


@pytest.fixture(scope="module")
def heads32(tiny):
    """The tiny Llama with 32-value attention heads (q8_0 and q4_0 store a cache in blocks of 32)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = tiny.model.config.to_dict()
    cfg.update(head_dim=32, num_attention_heads=2, num_key_value_heads=2)
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**cfg)).eval(), tiny.tokenizer


def _save(model, tokenizer, steps: list[dict], directory: Path) -> Path:
    planned = plan([Step(**s) for s in steps])
    check_policy("llama.cpp", planned)
    apply_planned(model, planned, ApplyContext(tokenizer=tokenizer, seed=0))
    get_runtime("llama.cpp").save(model, tokenizer, directory, planned)
    return directory


def test_a_quantized_cache_is_recorded_measured_at_depth_and_scored(heads32, tmp_path: Path) -> None:
    model, tokenizer = heads32
    kv = {"technique": "kv.cache_type", "params": {"k": "q4_0", "v": "q4_0"}}
    plain = _save(model, tokenizer, [], tmp_path / "f16")
    small = _save(model, tokenizer, [kv], tmp_path / "q4")
    manifest = json.loads((small / checkpoint.MANIFEST).read_text())
    assert manifest[CONTEXT_KEY] == {"type_k": "Q4_0", "type_v": "Q4_0", "flash_attn": True}
    assert CONTEXT_KEY not in json.loads((plain / checkpoint.MANIFEST).read_text())  # the default is not written
    assert (small / "model.gguf").read_bytes() == (plain / "model.gguf").read_bytes()  # the weights are untouched

    deep = MeasureSettings(runtime="llama.cpp", prompt_tokens=32, decode_tokens=8, repeats=1, context=1500)
    f16, q4 = (get_target("local").measure(d, deep) for d in (plain, small))
    assert q4.memory_mb < f16.memory_mb  # a quarter of the cache, and flash attention's smaller buffers
    runtime = get_runtime("llama.cpp")
    ppl = {name: runtime.evaluate(None, tokenizer, d, FID).ppl for name, d in (("f16", plain), ("q4", small))}
    assert ppl["q4"] != ppl["f16"]  # the cache really is q4_0 when scoring


def test_the_cache_settings_reach_the_commands_of_the_model_card(heads32, tmp_path: Path) -> None:
    from autoslm import model_card
    from autoslm.recipe import Recipe, RecipeStep

    model, tokenizer = heads32
    steps = [{"technique": "kv.cache_type", "params": {"k": "q8_0", "v": "q8_0"}}]
    directory = _save(model, tokenizer, steps, tmp_path / "c")
    recipe = Recipe(
        base_model={"name": "tiny-llama", "source": "tiny", "fingerprint": "0" * 64},
        steps=[
            RecipeStep(technique=s["technique"], plugin="autoslm", version="0.1.0", params=s["params"]) for s in steps
        ],
        calibration={},
        seed=0,
        target={"kind": "local", "runtime": "llama.cpp", "threads": 2, "context": 4096},
        metrics={"ppl": 1.0},
    )
    text = model_card.write(directory, recipe).read_text()
    assert "llama-server -m model.gguf -c 4096 -t 2 -ctk q8_0 -ctv q8_0 -fa on" in text
    assert "with 4096 tokens in the KV cache" in text and "OLLAMA_KV_CACHE_TYPE=q8_0" in text


def test_heads_that_are_not_whole_blocks_are_refused_in_words(fresh_tiny) -> None:
    """tiny-llama's heads have 16 values: llama.cpp cannot store them as q8_0 (it fails to create a context)."""
    from autoslm.models import model_info
    from autoslm.plugins import get_registry

    cls = get_registry().technique("kv.cache_type").cls
    assert cls.space(model_info(fresh_tiny.model))["k"].choices == ("f16",)
    planned = plan([Step(technique="kv.cache_type", params={"k": "q8_0"})])
    with pytest.raises(UserError, match="blocks of 32 values, and this model's attention heads have 16: use f16"):
        apply_planned(fresh_tiny.model, planned, ApplyContext(tokenizer=fresh_tiny.tokenizer, seed=0))
    with pytest.raises(UserError, match="a q4_0 V cache needs flash_attn: true"):
        plan([Step(technique="kv.cache_type", params={"v": "q4_0", "flash_attn": False})])
    with pytest.raises(UserError, match="k: Input should be 'f16', 'q8_0' or 'q4_0'"):
        plan([Step(technique="kv.cache_type", params={"k": "q2_k"})])


@pytest.mark.parametrize(
    "recorded",
    [
        {"type_k": "Q2_K"},  # a type this runtime does not offer for the cache
        {"type_k": "F16", "n_ctx": 10**9},  # a setting nobody should slip in through a manifest
        ["Q8_0"],
        "Q8_0",
        {"flash_attn": "maybe"},
    ],
)
def test_a_hostile_cache_record_in_a_manifest_is_one_clear_error(heads32, tmp_path: Path, recorded) -> None:
    model, tokenizer = heads32
    directory = _save(model, tokenizer, [], tmp_path / "c")
    path = directory / checkpoint.MANIFEST
    path.write_text(json.dumps({**json.loads(path.read_text()), CONTEXT_KEY: recorded}))
    with pytest.raises(UserError, match=rf"'{CONTEXT_KEY}' is not understood .*re-export the checkpoint") as err:
        CacheSettings.of(directory)
    assert "\n" not in str(err.value)
    with pytest.raises(MeasurementError, match="is not understood"):
        get_target("local").measure(directory, MeasureSettings(runtime="llama.cpp", prompt_tokens=16, decode_tokens=4))
