"""quant.gguf: llama.cpp's own quantization of the exported GGUF (`llama_model_quantize`), applied by the llama.cpp
runtime when it writes a candidate. Every torch-side step (pruning, depth, distillation) runs first.

  type              the whole-model type: Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_K_S, Q4_0, IQ4_NL, Q3_K_M (or F16/BF16)
  output_type       the output projection's type (llama.cpp picks one per `type` when unset)
  token_embd_type   the token embedding's type (with a tied embedding it also serves as the output)
  overrides         per-tensor-class types, e.g. {"attn_v": "Q8_0", "ffn_down": "Q6_K"} (`tt_overrides`)
  imatrix           weigh rounding errors by an importance matrix: the mean squared input of every weight's
                    columns on the calibration text, computed by llama.cpp on the candidate's F32 GGUF (after
                    pruning), as llama.cpp's imatrix tool does
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

import autoslm
from autoslm import ApplyContext, Categorical, Stage, Technique, TechniqueConfig

ModelType = Literal["Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "Q4_0", "IQ4_NL", "Q3_K_M", "F16", "BF16"]
TensorType = Literal[
    "F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0", "IQ4_NL", "Q3_K", "Q2_K"
]
TENSOR_CLASSES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


class GgufQuantConfig(TechniqueConfig):
    type: ModelType = "Q8_0"
    output_type: TensorType | None = Field(None, description="output.weight (None: llama.cpp's choice for `type`)")
    token_embd_type: TensorType | None = Field(None, description="token_embd.weight (None: llama.cpp's choice)")
    overrides: dict[str, TensorType] = Field(default_factory=dict, description="tensor class -> type")
    imatrix: bool = Field(False, description="importance matrix from the calibration text")
    imatrix_samples: int = Field(16, ge=1, le=512, description="calibration windows for the importance matrix")
    imatrix_seq_len: int = Field(256, ge=8, le=4096)

    @field_validator("overrides")
    @classmethod
    def _known_classes(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(TENSOR_CLASSES))
        if unknown:
            raise ValueError(f"unknown tensor class(es) {unknown}: use {', '.join(TENSOR_CLASSES)}")
        return dict(sorted(value.items()))


class GgufQuant(Technique):
    name = "quant.gguf"
    stage = Stage.EXPORT
    runtime = "llama.cpp"
    description = "llama.cpp quantization of the GGUF: whole-model, output/embedding and per-tensor types, imatrix"
    requires_calibration = True
    needs_torch_model = False  # llama.cpp quantizes (and weighs, for the imatrix) the GGUF it exported
    Config = GgufQuantConfig
    # llama.cpp's whole-model types as people publish them (4 bits and below with an importance matrix), most used
    # first: the warm start tries each alone, so a search is never worse than the preset its budget allows
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "Q4_K_M+imatrix": {"type": "Q4_K_M", "imatrix": True},
        "Q4_0+imatrix": {"type": "Q4_0", "imatrix": True},
        "Q6_K": {"type": "Q6_K"},
        "Q3_K_M+imatrix": {"type": "Q3_K_M", "imatrix": True},
        "IQ4_NL+imatrix": {"type": "IQ4_NL", "imatrix": True},
        "Q5_K_M+imatrix": {"type": "Q5_K_M", "imatrix": True},
        "Q8_0": {"type": "Q8_0"},  # the default: named so that a budget can say decode_ms<=Q8_0
        "Q4_K_S+imatrix": {"type": "Q4_K_S", "imatrix": True},
    }

    @classmethod
    def space(cls, info: dict[str, int], target: dict[str, Any] | None = None) -> dict[str, Any]:
        from autoslm.runtimes.llamacpp import embedding_types

        embd = embedding_types(info.get("hidden_size", 256))
        return {
            "type": Categorical(choices=("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "IQ4_NL", "Q3_K_M")),
            "token_embd_type": Categorical(choices=(None, *embd)),
            "imatrix": Categorical(choices=(False, True)),
        }

    def apply(self, model: Any, config: GgufQuantConfig, ctx: ApplyContext) -> Any:
        return model  # the llama.cpp runtime quantizes the GGUF it writes (LlamaCppRuntime.save)


@autoslm.hookimpl
def register_techniques(register: Any) -> None:
    register(GgufQuant)
