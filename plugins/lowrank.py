"""lowrank.svd: activation-aware low-rank factorisation of Linear layers (ASVD-style).

A Linear W (out x in) becomes two: x -> A x (rank r) -> B (A x), with W ~= B A. Plain SVD treats every input
channel alike; here the columns are first scaled by the channel's mean activation magnitude on calibration text
(S = diag(mean|x_j|)^alpha), so the truncation spends its error where activations are small:
    W S = U E V^T,   B = U_r E_r,   A = V_r^T S^-1
A layer is replaced only where r (in + out) < in x out, i.e. where it really removes parameters.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

import autoslm
from autoslm import ApplyContext, Categorical, Codec, Float, Stage, Technique, TechniqueConfig
from autoslm.calibration import capture_inputs, run_windows

Proj = Literal["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LowRankConfig(TechniqueConfig):
    rank_ratio: float = Field(0.5, gt=0.0, le=1.0, description="kept rank as a share of min(in, out)")
    targets: tuple[Proj, ...] = Field(("gate_proj", "up_proj", "down_proj"), min_length=1)
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="activation awareness (0 = plain SVD)")
    round_to: int = Field(8, ge=1)
    calibration_samples: int = Field(8, ge=1)
    calibration_seq_len: int = Field(256, ge=8)


class LowRank(Technique):
    name = "lowrank.svd"
    stage = Stage.LOWRANK
    description = "activation-aware SVD factorisation of Linear layers to a rank ratio"
    requires_calibration = True
    Config = LowRankConfig

    @classmethod
    def space(cls, info: dict[str, int], target: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "rank_ratio": Float(low=0.2, high=0.9),
            "targets": Categorical(choices=(("gate_proj", "up_proj", "down_proj"), ("o_proj", "q_proj"))),
        }

    def apply(self, model: Any, config: LowRankConfig, ctx: ApplyContext) -> Any:
        import torch
        from autoslm_plugins.lowrank_layer import LowRankLinear

        names = [
            n
            for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in config.targets and n != "lm_head"
        ]
        if not names:
            raise ValueError(f"lowrank.svd: no Linear layer named {', '.join(config.targets)} in this model")
        scales = self._activation_scales(model, names, config, ctx) if config.alpha > 0 else {}
        replaced = 0
        with torch.no_grad():
            for n in names:
                lin = model.get_submodule(n)
                out_f, in_f = lin.weight.shape
                rank = max(
                    config.round_to, round(config.rank_ratio * min(in_f, out_f) / config.round_to) * config.round_to
                )
                if rank * (in_f + out_f) >= in_f * out_f:
                    continue
                w = lin.weight.detach().double()
                s = scales[n].double().clamp(min=1e-6).pow(config.alpha) if n in scales else torch.ones(in_f).double()
                u, e, vt = torch.linalg.svd(w * s, full_matrices=False)
                new = LowRankLinear(in_f, out_f, rank, lin.bias is not None)
                new.up.weight.copy_((u[:, :rank] * e[:rank]).to(lin.weight.dtype))
                new.down.weight.copy_((vt[:rank] / s).to(lin.weight.dtype))
                if lin.bias is not None:
                    new.up.bias.copy_(lin.bias)
                model.set_submodule(n, new)
                replaced += 1
        ctx.logger.info("lowrank.svd replaced %d of %d layers", replaced, len(names))
        return model

    def _activation_scales(self, model: Any, names: list[str], config: LowRankConfig, ctx: ApplyContext) -> dict:
        sums: dict[str, Any] = {}

        def record(name: str, x: Any) -> None:
            s = x.abs().double().sum(0)
            sums[name] = sums[name] + s if name in sums else s

        windows = ctx.calibration(config.calibration_samples, config.calibration_seq_len)
        with capture_inputs({n: model.get_submodule(n) for n in names}, record):
            count = run_windows(model, windows)
        return {n: (v / count).float() for n, v in sums.items()}


class LowRankCodec(Codec):
    """Rebuilds the LowRankLinear shell; its `down`/`up` layers are saved like any Linear (or by their own codec
    when a later step quantized them)."""

    name = "autoslm.lowrank_linear"
    container = True

    @property
    def module_type(self) -> type:  # type: ignore[override]
        from autoslm_plugins.lowrank_layer import LowRankLinear

        return LowRankLinear

    def encode(self, module: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        meta = {"in_features": module.in_features, "out_features": module.out_features, "rank": module.rank}
        bias = module.up.bias() if callable(module.up.bias) else module.up.bias  # quantized Linears: a method
        return {}, {**meta, "bias": bias is not None}

    def decode(self, tensors: dict[str, Any], meta: dict[str, Any]) -> Any:
        from autoslm_plugins.lowrank_layer import LowRankLinear

        return LowRankLinear(meta["in_features"], meta["out_features"], meta["rank"], meta["bias"])


@autoslm.hookimpl
def register_techniques(register: Any) -> None:
    register(LowRank)


@autoslm.hookimpl
def register_codecs(register: Any) -> None:
    register(LowRankCodec())
