"""distill.kd: recover a compressed model by knowledge distillation from the original (KL on logits).

The teacher is the uncompressed base model (ctx.teacher()); the data is calibration text, in a fixed seeded order.
`steps` is the budget the search chooses (0 = skip). Runs on the CPU in fp32; the same seed gives the same weights.
Pruned models without recovery are often useless; this is what makes them competitive.

The optimizer: AdamW keeps two fp32 values per trained value (the student's size twice over); Adafactor keeps a row
and a column per matrix, next to nothing. Adafactor steps each value by its learning rate times the tensor's RMS, so
each tensor gets the rate that makes its step per value `lr`, as AdamW's: `lr` and its range mean the same for both
(benchmarks/distill_memory.py measures the memory and the perplexity each reaches).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

import autoslm
from autoslm import ApplyContext, Float, Int, Stage, Technique, TechniqueConfig


class KDConfig(TechniqueConfig):
    steps: int = Field(50, ge=0, description="optimizer steps (0 = no distillation)")
    lr: float = Field(5e-5, gt=0.0, le=1e-2)
    batch_size: int = Field(4, ge=1)
    seq_len: int = Field(128, ge=8)
    temperature: float = Field(1.0, gt=0.0)
    train_embeddings: bool = Field(False, description="also update the (tied) embedding and lm_head")
    optimizer: Literal["adamw", "adafactor"] = Field(
        "adamw", description="adamw (state: twice the trained weights) or adafactor (a row and a column per matrix)"
    )


# Adafactor's floor on a tensor's RMS in its relative step (torch's default eps[1])
ADAFACTOR_EPS2 = 1e-3


def make_optimizer(params: list[Any], config: KDConfig) -> Any:
    """The optimizer `config` names over `params`. Adafactor gets a group per tensor, with the rate that makes its
    step per value `config.lr` (its step is the rate times the tensor's RMS)."""
    import torch

    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    groups = []
    for p in params:
        rms = float(p.detach().float().pow(2).mean().sqrt())
        groups.append({"params": [p], "lr": config.lr / max(ADAFACTOR_EPS2, rms)})
    return torch.optim.Adafactor(groups, lr=config.lr, eps=(None, ADAFACTOR_EPS2), weight_decay=0.0)


class Distill(Technique):
    name = "distill.kd"
    stage = Stage.DISTILL
    description = "knowledge distillation from the original model (KL on logits) on calibration text"
    requires_calibration = True
    Config = KDConfig

    @classmethod
    def space(cls, info: dict[str, int], target: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"steps": Int(low=0, high=100, step=25), "lr": Float(low=1e-5, high=2e-4, log=True)}

    def apply(self, model: Any, config: KDConfig, ctx: ApplyContext) -> Any:
        import torch
        import torch.nn.functional as F

        if config.steps == 0:
            return model
        teacher = ctx.teacher()
        windows = ctx.calibration(config.steps * config.batch_size, config.seq_len)
        torch.manual_seed(ctx.seed)
        embed_ids = {id(p) for p in model.get_input_embeddings().parameters()}
        if model.get_output_embeddings() is not None:
            embed_ids |= {id(p) for p in model.get_output_embeddings().parameters()}
        params = []
        for p in model.parameters():
            trainable = p.is_floating_point() and (config.train_embeddings or id(p) not in embed_ids)
            p.requires_grad_(trainable)
            if trainable:
                params.append(p)
        if not params:
            raise ValueError("distill.kd: the model has no trainable floating-point parameters (quantize after it)")
        opt = make_optimizer(params, config)
        model.train()
        t = config.temperature
        losses = []
        for step in range(config.steps):
            batch = windows[step * config.batch_size : (step + 1) * config.batch_size]
            with torch.no_grad():
                target = F.log_softmax(teacher(input_ids=batch, use_cache=False).logits.float() / t, -1)
            student = F.log_softmax(model(input_ids=batch, use_cache=False).logits.float() / t, -1)
            loss = F.kl_div(student, target, log_target=True, reduction="batchmean") * t * t / batch.shape[1]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        ctx.logger.info("distill.kd: %d steps, loss %.4f -> %.4f", config.steps, losses[0], losses[-1])
        return model


@autoslm.hookimpl
def register_techniques(register: Any) -> None:
    register(Distill)
