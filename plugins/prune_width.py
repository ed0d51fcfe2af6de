"""prune.width: structured pruning of MLP channels and attention heads, with torch-pruning's pruning functions.

Why per block and not torch-pruning's whole-model dependency graph: on Llama the graph builder hangs when the
attention projections are prunable (rotary ops make the query group grow without end; see docs/techniques.md),
and the coupling inside a Llama block is simple and known. So for each decoder block we pick indices ourselves and
let `torch_pruning.prune_linear_out_channels` / `prune_linear_in_channels` cut the tensors:

  MLP:  gate_proj and up_proj lose output channels, down_proj the same input channels.
  Heads (grouped-query aware): the same number of query heads is removed from every key/value group, so each
        remaining query head still reads its own key/value head; q_proj loses the heads' output rows and o_proj
        the matching input columns. Key/value heads are kept.

Importance is activation-aware (Wanda-style, aggregated per channel/head): the RMS of the channel's activation
on calibration text times the norm of the weights that read it. Plain weight magnitude destroys this model
(perplexity 330,000 at 20% MLP pruning, measured), so it is offered only as a baseline.

Every block keeps the same number of channels and heads, so the result is still a plain Llama (or Gemma-3):
`config.json` is updated and the checkpoint reloads with `transformers.AutoModelForCausalLM.from_pretrained`. Head
counts the architecture's config refuses (hidden size not a multiple of the heads left) are not offered.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

import autoslm
from autoslm import ApplyContext, Categorical, Float, Stage, Technique, TechniqueConfig
from autoslm.calibration import capture_inputs, run_windows
from autoslm.errors import UserError


class WidthConfig(TechniqueConfig):
    mlp_ratio: float = Field(0.0, ge=0.0, lt=1.0, description="share of MLP intermediate channels removed")
    heads_per_group: int = Field(0, ge=0, description="query heads removed from every key/value group")
    importance: Literal["activation", "magnitude", "random"] = "activation"
    round_to: int = Field(8, ge=1, description="keep the channel count a multiple of this (kernel friendly)")
    calibration_samples: int = Field(8, ge=1)
    calibration_seq_len: int = Field(256, ge=8)
    version: ClassVar[int] = 2  # 2: kept channels rounded to the nearest multiple of round_to (1: rounded down)


class WidthPrune(Technique):
    name = "prune.width"
    stage = Stage.PRUNE
    description = "remove MLP channels and query heads (GQA-aware) by activation importance (torch-pruning)"
    requires_calibration = True
    Config = WidthConfig

    @classmethod
    def refuses_model(cls, model: Any) -> str | None:
        layers = getattr(getattr(model, "model", None), "layers", None) or []
        mlp = getattr(layers[0], "mlp", None) if len(layers) else None
        if mlp is not None and not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
            fused = [n for n, _ in mlp.named_children()]
            return (f"its MLP has {', '.join(fused)} (fused or not gated): prune.width prunes separate gate_proj, "
                    "up_proj and down_proj")  # fmt: skip
        return None

    @classmethod
    def space(cls, info: dict[str, int], target: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "mlp_ratio": Float(low=0.0, high=0.5),
            "heads_per_group": Categorical(choices=head_choices(info)),
        }

    @classmethod
    def limits(cls, info: dict[str, int]) -> dict[str, tuple[float, float]]:
        per_group = info["num_attention_heads"] // info["num_key_value_heads"]
        return {"heads_per_group": (0, per_group - 1)}  # one query head per key/value group at least must stay

    def apply(self, model: Any, config: WidthConfig, ctx: ApplyContext) -> Any:
        import torch
        import torch_pruning as tp

        cfg = model.config
        layers = model.model.layers
        heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
        per_group = heads // kv
        why = self.refuses_model(model)
        if why:
            raise UserError(f"prune.width: {why}")
        if config.heads_per_group and not hasattr(layers[0].self_attn, "q_proj"):
            raise UserError(
                "prune.width: this model's attention has no separate q_proj (fused qkv): use heads_per_group=0"
            )
        if config.heads_per_group >= per_group:
            raise UserError(
                f"prune.width: heads_per_group={config.heads_per_group} would leave no query head per key/value "
                f"group (this model has {per_group} per group); use at most {per_group - 1}"
            )
        allowed = head_choices(
            {"num_attention_heads": heads, "num_key_value_heads": kv, "hidden_size": cfg.hidden_size}
        )
        if config.heads_per_group not in allowed:
            left = heads - kv * config.heads_per_group
            raise UserError(
                f"prune.width: heads_per_group={config.heads_per_group} leaves {left} query heads, and this model's "
                f"config needs hidden_size {cfg.hidden_size} to be a multiple of the head count; use one of {allowed}"
            )
        inter = cfg.intermediate_size
        keep_channels = _round_keep(inter, config.mlp_ratio, config.round_to)
        if keep_channels == inter and config.heads_per_group == 0:
            return model
        mlp_scores, head_scores = self._importance(model, config, ctx)
        head_dim = layers[0].self_attn.head_dim
        gen = torch.Generator().manual_seed(ctx.seed)
        for i, layer in enumerate(layers):
            if keep_channels < inter:
                drop = _lowest(mlp_scores[i], inter - keep_channels, config.importance, gen)
                tp.prune_linear_out_channels(layer.mlp.gate_proj, drop)
                tp.prune_linear_out_channels(layer.mlp.up_proj, drop)
                tp.prune_linear_in_channels(layer.mlp.down_proj, drop)
            if config.heads_per_group:
                drop_heads = []
                for g in range(kv):
                    group = list(range(g * per_group, (g + 1) * per_group))
                    scores = head_scores[i][group]
                    local = _lowest(scores, config.heads_per_group, config.importance, gen)
                    drop_heads += [group[j] for j in local]
                rows = [h * head_dim + d for h in sorted(drop_heads) for d in range(head_dim)]
                attn = layer.self_attn
                tp.prune_linear_out_channels(attn.q_proj, rows)
                tp.prune_linear_in_channels(attn.o_proj, rows)
                attn.num_key_value_groups = per_group - config.heads_per_group
        cfg.intermediate_size = keep_channels
        cfg.num_attention_heads = heads - kv * config.heads_per_group
        cfg.head_dim = head_dim
        ctx.logger.info(
            "prune.width: intermediate %d -> %d, heads %d -> %d", inter, keep_channels, heads, cfg.num_attention_heads
        )
        return model

    def _importance(self, model: Any, config: WidthConfig, ctx: ApplyContext) -> tuple[list[Any], list[Any]]:
        """Per block: a score per MLP channel and per query head (higher = more important)."""
        import torch

        layers = model.model.layers
        head_dim = layers[0].self_attn.head_dim
        if config.importance != "activation":
            mlp = [layer.mlp.down_proj.weight.detach().float().norm(dim=0) for layer in layers]
            heads = [
                layer.self_attn.o_proj.weight.detach().float().norm(dim=0).view(-1, head_dim).sum(-1)
                for layer in layers
            ]
            return mlp, heads
        sq_mlp = [torch.zeros(layer.mlp.down_proj.in_features, dtype=torch.float64) for layer in layers]
        sq_attn = [torch.zeros(layer.self_attn.o_proj.in_features, dtype=torch.float64) for layer in layers]
        stores = {f"mlp.{i}": s for i, s in enumerate(sq_mlp)} | {f"attn.{i}": s for i, s in enumerate(sq_attn)}

        def record(key: str, x: Any) -> None:
            stores[key].add_(x.double().pow(2).sum(0))

        watched = {f"mlp.{i}": layer.mlp.down_proj for i, layer in enumerate(layers)}
        watched |= {f"attn.{i}": layer.self_attn.o_proj for i, layer in enumerate(layers)}
        windows = ctx.calibration(config.calibration_samples, config.calibration_seq_len)
        with capture_inputs(watched, record):
            count = run_windows(model, windows)
        mlp, heads = [], []
        for i, layer in enumerate(layers):
            rms_mlp = (sq_mlp[i] / count).sqrt().float()
            mlp.append(rms_mlp * layer.mlp.down_proj.weight.detach().float().norm(dim=0))
            rms_attn = (sq_attn[i] / count).sqrt().float()
            per_dim = rms_attn * layer.self_attn.o_proj.weight.detach().float().norm(dim=0)
            heads.append(per_dim.view(-1, head_dim).sum(-1))
        return mlp, heads


def head_choices(info: dict[str, int]) -> tuple[int, ...]:
    """The query heads per key/value group that can be removed: at least one per group stays, and the heads left
    divide hidden_size (transformers refuses a Llama or Gemma config otherwise: Gemma-3-270M's 4 heads can become
    2 or 1, not 3)."""
    heads, kv, hidden = info["num_attention_heads"], info["num_key_value_heads"], info["hidden_size"]
    return tuple(h for h in range(heads // kv) if hidden % (heads - kv * h) == 0)


def _round_keep(total: int, ratio: float, multiple: int) -> int:
    """Channels kept: `total * (1 - ratio)` rounded to the nearest multiple of `multiple` (at least one multiple).
    Version 1 rounded down, so with `round_to: 256` a ratio of 0.001 removed 256 of 1536 channels."""
    keep = total - round(total * ratio)
    keep = max(multiple, round(keep / multiple) * multiple) if total >= multiple else max(1, keep)
    return min(total, keep)


def _lowest(scores: Any, k: int, importance: str, gen: Any) -> list[int]:
    import torch

    if k <= 0:
        return []
    if importance == "random":
        return sorted(torch.randperm(len(scores), generator=gen)[:k].tolist())
    # stable: ties broken by index, so the choice is deterministic
    order = sorted(range(len(scores)), key=lambda j: (float(scores[j]), j))
    return sorted(order[:k])


@autoslm.hookimpl
def register_techniques(register: Any) -> None:
    register(WidthPrune)
