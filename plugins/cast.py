"""cast.dtype: every weight and activation in bf16 or fp16 (fast prefill on CPUs with bf16 units; half the size)."""

from __future__ import annotations

from typing import Any, Literal

import autoslm
from autoslm import ApplyContext, Categorical, Stage, Technique, TechniqueConfig


class CastConfig(TechniqueConfig):
    dtype: Literal["bfloat16", "float16"] = "bfloat16"


class Cast(Technique):
    name = "cast.dtype"
    stage = Stage.CAST
    description = "cast all weights and activations to bf16/fp16 (fast prefill on CPUs with bf16 units)"
    incompatible_with = ("quant.dynamic_int8", "quant.weight_only")
    Config = CastConfig

    @classmethod
    def space(cls, info: dict[str, int], target: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"dtype": Categorical(choices=("bfloat16",))}

    def apply(self, model: Any, config: CastConfig, ctx: ApplyContext) -> Any:
        import torch

        # Non-persistent buffers (rotary inv_freq) are not saved; a reloaded model recomputes them in fp32.
        # Keep them fp32 here too, so the model measured in the search is the model that loads from the checkpoint.
        saved = set(model.state_dict())
        keep = {n: b for n, b in model.named_buffers() if n not in saved and b.is_floating_point()}
        model = model.to(getattr(torch, config.dtype))
        for name, buf in keep.items():
            owner, _, attr = name.rpartition(".")
            model.get_submodule(owner).register_buffer(attr, buf, persistent=False)
        return model


@autoslm.hookimpl
def register_techniques(register: Any) -> None:
    register(Cast)
