"""The family matrix: one tiny random-weight model per architecture family that both transformers and the pinned
llama.cpp run, built offline from a transformers config (a few MB each, SmolLM2's tokenizer). `--model tiny-NAME`
loads one; the tests run every family through llama.cpp (logits against torch, every technique, a search).

Each family is its transformers `model_type` plus the settings that exercise what sets it apart (biases, q/k norms,
fused projections, soft-capping, multipliers, layers without rotary). Norm weights and biases are randomised, so
a convention the export got wrong (x*w against x*(1+w), a dropped bias) shows in the logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

BASE: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 192,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 49152,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
    "rms_norm_eps": 1e-5,
}


@dataclass(frozen=True)
class Family:
    model_type: str  # transformers' name for the config
    what: str  # what sets the family apart, as the tests exercise it
    settings: dict[str, Any] = field(default_factory=dict)
    # False where transformers forces the family's own tokenizer class onto SmolLM2's vocabulary (Qwen2): a hybrid
    # no real model has, whose pre-tokenizer llama.cpp's converter rightly does not recognise. Its GGUF is written
    # without a vocabulary (config key `autoslm_gguf_vocab`); autoslm scores and times from token ids only.
    gguf_vocab: bool = True

    def config(self) -> dict[str, Any]:
        return {**BASE, **self.settings}


FAMILIES: dict[str, Family] = {
    "mistral": Family("mistral", "Llama's block, untied head", {"tie_word_embeddings": False}),
    "qwen2": Family("qwen2", "q/k/v biases, tied embeddings", gguf_vocab=False),
    "qwen2-untied": Family("qwen2", "q/k/v biases, untied head", {"tie_word_embeddings": False}, gguf_vocab=False),
    "qwen3": Family("qwen3", "q/k RMS norms per head"),
    "phi3": Family("phi3", "fused qkv and gate_up projections", {"head_dim": None, "tie_word_embeddings": False}),
    "gemma2": Family(
        "gemma2",
        "x*(1+w) norms, four per block, attention and final soft-capping, alternating sliding layers",
        {
            "num_key_value_heads": 1,
            "sliding_window": 32,
            "query_pre_attn_scalar": 16,
            "rms_norm_eps": 1e-6,
            "attn_logit_softcapping": 50.0,
            "final_logit_softcapping": 30.0,
            "hidden_activation": "gelu_pytorch_tanh",
        },
    ),
    "granite": Family(
        "granite",
        "embedding, residual, attention and logit multipliers",
        {"embedding_multiplier": 6.0, "residual_multiplier": 0.5, "attention_multiplier": 0.125, "logits_scaling": 4.0},
    ),
    "olmo2": Family(
        "olmo2",
        "norms after attention and MLP, q/k norms over all heads, untied head",
        {"num_key_value_heads": 4, "tie_word_embeddings": False},
    ),
    "smollm3": Family("smollm3", "no rotary on every 4th layer", {"no_rope_layer_interval": 4}),
}


def tiny_names() -> tuple[str, ...]:
    return tuple(f"tiny-{name}" for name in FAMILIES)


def build(name: str) -> Any:
    """The tiny model of family `name`, seeded (the caller seeds torch), with randomised norms and biases."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    family = FAMILIES[name]
    config = AutoConfig.for_model(family.model_type, **{k: v for k, v in family.config().items() if v is not None})
    if family.settings.get("head_dim", 0) is None and hasattr(config, "head_dim"):
        config.head_dim = config.hidden_size // config.num_attention_heads
    if not family.gguf_vocab:
        config.autoslm_gguf_vocab = False  # kept in config.json, so pruned checkpoints of it carry it too
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if "norm" in pname:
                param.add_(torch.randn_like(param) * 0.3)
            elif pname.endswith(".bias"):
                param.normal_(0.0, 0.05)
    return model
