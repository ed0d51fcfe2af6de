"""kv.cache_type: the number format of llama.cpp's KV cache (`llama-server -ctk q8_0 -ctv q8_0 -fa on`).

The weights are untouched: the cache that holds every past token's keys and values is stored in fewer bits, so at a
long context (`--context 4096`) the model needs less memory, for some loss of quality. Both are measured like every
other technique's: memory_mb is the peak with the cache filled to `--context` tokens, perplexity and KLD are
llama.cpp's on the same held-out windows with the cache in that format.

  k, v        the keys' and the values' format: f16 (llama.cpp's default), q8_0, q4_0
  flash_attn  llama.cpp's fused attention (`-fa on`); a quantized V cache needs it

The llama.cpp runtime records the settings in the checkpoint's manifest (`llama_context`) and opens the model with
them wherever it runs it: measuring, evaluating, on an agent.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

import autoslm
from autoslm import ApplyContext, Categorical, Stage, Technique, TechniqueConfig
from autoslm.errors import UserError

CacheType = Literal["f16", "q8_0", "q4_0"]
BLOCK = 32  # values per block of q8_0 and q4_0: a head's keys and values are whole blocks or cannot be stored


class KvCacheConfig(TechniqueConfig):
    k: CacheType = "f16"
    v: CacheType = "f16"
    flash_attn: bool = True

    @model_validator(mode="after")
    def _v_needs_flash_attention(self) -> KvCacheConfig:
        if self.v != "f16" and not self.flash_attn:
            raise ValueError(f"a {self.v} V cache needs flash_attn: true (llama.cpp quantizes V only with it)")
        return self

    def context_settings(self) -> dict[str, Any]:
        """What the llama.cpp runtime opens the model with (not a quantization of the weights)."""
        return {"type_k": self.k.upper(), "type_v": self.v.upper(), "flash_attn": self.flash_attn}


class KvCacheType(Technique):
    name = "kv.cache_type"
    stage = Stage.EXPORT
    runtime = "llama.cpp"
    description = "llama.cpp's KV cache in f16, q8_0 or q4_0 (keys and values apart): less memory at a long context"
    needs_torch_model = False
    Config = KvCacheConfig

    @classmethod
    def space(cls, info: dict[str, int], target: dict[str, Any] | None = None) -> dict[str, Any]:
        types = ("f16", "q8_0", "q4_0") if info.get("head_dim", BLOCK) % BLOCK == 0 else ("f16",)
        return {"k": Categorical(choices=types), "v": Categorical(choices=types)}

    def apply(self, model: Any, config: KvCacheConfig, ctx: ApplyContext) -> Any:
        cfg = model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        quantized = sorted({t for t in (config.k, config.v) if t != "f16"})
        if quantized and head_dim % BLOCK:
            raise UserError(
                f"kv.cache_type: llama.cpp stores a {quantized[0]} cache in blocks of {BLOCK} values, and this "
                f"model's attention heads have {head_dim}: use f16 for k and v"
            )
        return model  # the llama.cpp runtime opens the model with this cache (LlamaCppRuntime.save records it)


@autoslm.hookimpl
def register_techniques(register: Any) -> None:
    register(KvCacheType)
