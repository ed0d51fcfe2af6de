"""prune.depth: remove whole decoder blocks, least important first (ShortGPT-style block influence).

Importance of block i = 1 - mean cosine similarity between its input and output hidden states over calibration
tokens: a block that barely changes the residual stream can go. Scores are measured once on the uncompressed
model, and the k lowest-scoring blocks are removed together.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any, Literal

from pydantic import Field

import autoslm
from autoslm import ApplyContext, Int, Stage, Technique, TechniqueConfig
from autoslm.calibration import capture_inputs, run_windows


class DepthConfig(TechniqueConfig):
    blocks: int = Field(1, ge=0, description="number of decoder blocks to remove")
    importance: Literal["cosine", "last"] = Field(
        "cosine",
        description="cosine: ShortGPT block influence on calibration text; last: drop the last blocks",
    )
    calibration_samples: int = Field(8, ge=1, description="calibration windows used to score blocks")
    calibration_seq_len: int = Field(256, ge=8)


class DepthPrune(Technique):
    name = "prune.depth"
    stage = Stage.PRUNE
    description = "remove the k decoder blocks that change the hidden state least (ShortGPT)"
    requires_calibration = True
    removes_blocks = True
    Config = DepthConfig

    @classmethod
    def space(cls, info: dict[str, int], target: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"blocks": Int(low=0, high=max(0, info["num_layers"] // 2))}

    @classmethod
    def limits(cls, info: dict[str, int]) -> dict[str, tuple[float, float]]:
        return {"blocks": (0, max(0, info["num_layers"] - 1))}  # one block at least must stay

    def block_importance(self, model: Any, config: DepthConfig, ctx: ApplyContext) -> list[float]:
        import torch

        layers = _layers(model)
        if config.importance == "last":
            return [float(len(layers) - i) for i in range(len(layers))]
        windows = ctx.calibration(config.calibration_samples, config.calibration_seq_len)
        sims = torch.zeros(len(layers), dtype=torch.float64)
        for i, (a, b) in enumerate(_block_inputs_outputs(model, layers, windows)):
            sims[i] = torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).mean()
        return (1.0 - sims).tolist()

    def apply(self, model: Any, config: DepthConfig, ctx: ApplyContext) -> Any:
        import torch

        layers = _layers(model)
        if config.blocks >= len(layers):
            raise ValueError(f"prune.depth: cannot remove {config.blocks} of {len(layers)} blocks (keep at least one)")
        if config.blocks == 0:
            return model
        scores = self.block_importance(model, config, ctx)
        drop = set(sorted(range(len(layers)), key=lambda i: (scores[i], i))[: config.blocks])
        kept = [layer for i, layer in enumerate(layers) if i not in drop]
        model.model.layers = torch.nn.ModuleList(kept)
        for new_idx, layer in enumerate(kept):
            if hasattr(layer, "self_attn") and hasattr(layer.self_attn, "layer_idx"):
                layer.self_attn.layer_idx = new_idx
        cfg = model.config
        if getattr(cfg, "layer_types", None):
            cfg.layer_types = [t for i, t in enumerate(cfg.layer_types) if i not in drop]
        cfg.num_hidden_layers = len(kept)
        ctx.logger.info("prune.depth removed blocks %s", sorted(drop))
        return model


def _layers(model: Any) -> Any:
    try:
        return model.model.layers
    except AttributeError as exc:
        raise ValueError("prune.depth needs a decoder-only model with `model.layers` (Llama-style)") from exc


def _block_inputs_outputs(model: Any, layers: Any, windows: Any) -> list[tuple[Any, Any]]:
    """Each block's input and raw output over the windows, from one ordinary forward pass: block i's output is block
    i+1's input, and the last block's is the final norm's. The model calls its blocks its own way (rotary tables,
    sliding-window masks, per-layer types), so no architecture's calling convention is copied here."""
    watched = {str(i): layer for i, layer in enumerate(layers)} | {"norm": model.model.norm}
    seen: dict[str, Any] = {}
    with capture_inputs(watched, seen.__setitem__):
        run_windows(model, windows, batch=len(windows))
    inputs = [seen[str(i)] for i in range(len(layers))] + [seen["norm"]]
    return list(pairwise(inputs))


@autoslm.hookimpl
def register_techniques(register: Any) -> None:
    register(DepthPrune)
