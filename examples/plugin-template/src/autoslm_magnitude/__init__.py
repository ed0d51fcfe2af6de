"""sparse.magnitude: unstructured sparsity, one weight at a time, in every decoder block's Linear layers.

Per output row, the `sparsity` share of weights with the lowest score is set to zero:
  score = |W|                       (score: magnitude)
  score = |W| * ||X_j||_2           (score: wanda; X = the layer's inputs on calibration text, Sun et al. 2023)

Zeros do not make dense CPU kernels faster and safetensors stores them densely, so this technique alone buys
neither latency nor size: it is the tutorial's example of a complete plugin (docs/plugins.md in autoslm), and a
starting point for a sparse kernel or a sparse codec of your own.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

import autoslm
from autoslm import ApplyContext, Categorical, Float, Stage, Technique, TechniqueConfig

Proj = Literal["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class MagnitudeConfig(TechniqueConfig):
    """Every parameter has a default, so a recipe can always write it out explicitly."""

    sparsity: float = Field(0.5, ge=0.0, lt=1.0, description="share of weights zeroed in each output row")
    score: Literal["magnitude", "wanda"] = Field("magnitude", description="magnitude: |W|; wanda: |W| * ||X||")
    targets: tuple[Proj, ...] = Field(("gate_proj", "up_proj", "down_proj"), min_length=1)
    calibration_samples: int = Field(8, ge=1, description="calibration windows for wanda's input norms")
    calibration_seq_len: int = Field(128, ge=8)


class MagnitudeSparsity(Technique):
    name = "sparse.magnitude"
    stage = Stage.PRUNE  # runs with the other pruners: before low-rank, distillation and quantization
    description = "zero the lowest-scoring weights of each row (magnitude or Wanda)"
    requires_calibration = True  # for score=wanda
    incompatible_with = ("lowrank.svd",)  # factorising a sparse matrix makes it dense again
    Config = MagnitudeConfig

    @classmethod
    def space(cls, info: dict[str, int], target: dict[str, Any] | None = None) -> dict[str, Any]:
        """What a search may vary by default; a search-space YAML can narrow, widen or fix each entry."""
        return {"sparsity": Float(low=0.1, high=0.7), "score": Categorical(choices=("magnitude", "wanda"))}

    def apply(self, model: Any, config: MagnitudeConfig, ctx: ApplyContext) -> Any:
        import torch

        layers = _target_linears(model, config.targets)
        norms = _input_norms(model, layers, config, ctx) if config.score == "wanda" else {}
        with torch.no_grad():
            for name, lin in layers.items():
                w = lin.weight
                k = round(config.sparsity * w.shape[1])
                if k == 0:
                    continue
                score = w.detach().abs().float()
                if name in norms:
                    score = score * norms[name][None, :]
                drop = score.argsort(dim=1, stable=True)[:, :k]  # stable: ties break the same way every time
                w.scatter_(1, drop, 0.0)
        ctx.logger.info("sparse.magnitude zeroed %.0f%% of %d layers", 100 * config.sparsity, len(layers))
        return model


def _target_linears(model: Any, targets: tuple[str, ...]) -> dict[str, Any]:
    import torch

    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets and ".layers." in f".{name}"
    }


def _input_norms(model: Any, layers: dict[str, Any], config: MagnitudeConfig, ctx: ApplyContext) -> dict[str, Any]:
    """||X_j||_2 per input feature j of each layer, over the calibration windows (forward pre-hooks)."""
    import torch

    sums: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Any:
        def record(_module: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            sums[name] = sums.get(name, 0) + (x * x).sum(0)

        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    try:
        with torch.inference_mode():
            model(input_ids=ctx.calibration(config.calibration_samples, config.calibration_seq_len), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {n: s.sqrt() for n, s in sums.items()}


@autoslm.hookimpl
def register_techniques(register: Any) -> None:
    """autoslm calls this once when it loads the plugin; register each Technique subclass you provide."""
    register(MagnitudeSparsity)
