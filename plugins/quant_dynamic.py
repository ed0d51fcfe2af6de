"""quant.dynamic_int8: int8 weights + dynamic int8 activations for Linear layers (the variant that speeds up a CPU).

Plain dynamic int8 (torch's fbgemm kernels: one activation scale per tensor, 7-bit range) wrecks SmolLM2's quality
(perplexity 24.9 -> ~70 measured) because a few activation channels carry outliers. Three levers, all searchable:

  weight_scheme   per-channel weight scales (default) instead of one per tensor
  smooth_alpha    SmoothQuant scale migration: divide the outlier channels of the activation by s_j and multiply
                  the weights that read them by s_j (folded into the RMSNorm before q/k/v and gate/up, and into
                  up_proj before down_proj); exact in fp32, it moves quantization difficulty into the weights
  keep_fp32       the k Linear layers whose int8 output error on calibration text is largest stay in fp32

`include_lm_head` also quantizes the output projection (21% of SmolLM2's weights, tied to the embedding: it is
untied first, so the checkpoint keeps an fp32 embedding and an int8 head).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

import autoslm
from autoslm import ApplyContext, Categorical, Codec, Float, Int, Stage, Technique, TechniqueConfig
from autoslm.calibration import capture_inputs, run_windows
from autoslm.modeling import untie_lm_head


class DynamicInt8Config(TechniqueConfig):
    weight_scheme: Literal["per_channel", "per_tensor"] = "per_channel"
    smooth_alpha: float = Field(0.5, ge=0.0, le=1.0, description="SmoothQuant migration strength (0 = off)")
    keep_fp32: int = Field(0, ge=0, description="most sensitive Linear layers left in fp32")
    include_lm_head: bool = False
    calibration_samples: int = Field(8, ge=1)
    calibration_seq_len: int = Field(256, ge=8)


class DynamicInt8(Technique):
    name = "quant.dynamic_int8"
    stage = Stage.QUANTIZE
    description = "int8 weights, dynamic int8 activations (SmoothQuant + sensitive layers kept fp32)"
    requires_calibration = True
    incompatible_with = ("cast.dtype", "quant.weight_only")
    Config = DynamicInt8Config

    @classmethod
    def space(cls, info: dict[str, int], target: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "smooth_alpha": Float(low=0.0, high=0.8),
            "keep_fp32": Int(low=0, high=max(0, info["num_layers"] * 7 // 4), step=max(1, info["num_layers"] // 6)),
            "include_lm_head": Categorical(choices=(False, True)),
        }

    @classmethod
    def limits(cls, info: dict[str, int]) -> dict[str, tuple[float, float]]:
        return {"keep_fp32": (0, 7 * info["num_layers"])}  # the block's seven linear layers

    def apply(self, model: Any, config: DynamicInt8Config, ctx: ApplyContext) -> Any:
        import torch
        from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

        if next(model.parameters()).dtype != torch.float32:
            raise ValueError("quant.dynamic_int8 needs an fp32 model (apply it before any precision cast)")
        windows = ctx.calibration(config.calibration_samples, config.calibration_seq_len)
        if config.smooth_alpha > 0:
            smooth(model, windows, config.smooth_alpha)
        if config.include_lm_head:
            untie_lm_head(model)
        names = [
            n
            for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and (config.include_lm_head or n != "lm_head")
        ]
        if config.keep_fp32:
            errors = output_errors(model, names, windows[:2], config.weight_scheme)
            keep = set(sorted(names, key=lambda n: (-errors[n], n))[: config.keep_fp32])
            ctx.logger.info("quant.dynamic_int8 keeps fp32: %s", sorted(keep))
            names = [n for n in names if n not in keep]
        qconfig = per_channel_dynamic_qconfig if config.weight_scheme == "per_channel" else default_dynamic_qconfig
        return quantize_dynamic(model, {n: qconfig for n in names}, dtype=torch.qint8, inplace=True)


def smooth(model: Any, windows: Any, alpha: float) -> None:
    """SmoothQuant on every decoder block: norm->(q,k,v), norm->(gate,up), up->down, each norm scaled in its own
    weight convention (x*w for Llama, x*(1+w) for Gemma; `modeling.block_norms` finds the norm that feeds the MLP).
    Exact in fp32 (tests check it on every supported family)."""
    import torch

    from autoslm.modeling import block_norms, divide_norm_output

    layers = model.model.layers
    act_max: dict[str, Any] = {}

    def record(key: str, x: Any) -> None:
        m = x.abs().amax(0).float()
        act_max[key] = torch.maximum(act_max[key], m) if key in act_max else m

    watched = {}
    for i, layer in enumerate(layers):
        watched |= {f"{i}.attn": layer.self_attn.q_proj, f"{i}.mlp": layer.mlp.gate_proj}
        watched[f"{i}.down"] = layer.mlp.down_proj
    with capture_inputs(watched, record):
        run_windows(model, windows)
    plain = torch.nn.Linear
    with torch.no_grad():
        for i, layer in enumerate(layers):
            attn, mlp = layer.self_attn, layer.mlp
            # a group is smoothed only when every layer in it is still a plain Linear (not factorised by lowrank)
            qkv = [attn.q_proj, attn.k_proj, attn.v_proj]
            if all(type(m) is plain for m in qkv):
                s = _scales(act_max[f"{i}.attn"], qkv, alpha)
                divide_norm_output(block_norms(layer)[0], s)
                for lin in qkv:
                    lin.weight.mul_(s)
            gate_up = [mlp.gate_proj, mlp.up_proj]
            if all(type(m) is plain for m in gate_up):
                s = _scales(act_max[f"{i}.mlp"], gate_up, alpha)
                divide_norm_output(block_norms(layer)[1], s)
                for lin in gate_up:
                    lin.weight.mul_(s)
            if type(mlp.up_proj) is plain and type(mlp.down_proj) is plain:
                s = _scales(act_max[f"{i}.down"], [mlp.down_proj], alpha)
                mlp.up_proj.weight.div_(s[:, None])
                mlp.down_proj.weight.mul_(s)


def _scales(act: Any, linears: list[Any], alpha: float) -> Any:
    import torch

    w = torch.stack([lin.weight.detach().abs().amax(0) for lin in linears]).amax(0).float()
    s = act.clamp(min=1e-5).pow(alpha) / w.clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=1e-5, max=1e5)


def output_errors(model: Any, names: list[str], windows: Any, scheme: str) -> dict[str, float]:
    """Relative output error of each Linear quantized alone, on its own calibration inputs (one forward)."""
    import torch
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    inputs: dict[str, Any] = {}

    def record(name: str, x: Any) -> None:
        inputs[name] = x[:: max(1, x.shape[0] // 256)].clone()

    with capture_inputs({n: model.get_submodule(n) for n in names}, record):
        run_windows(model, windows, batch=len(windows))
    qconfig = per_channel_dynamic_qconfig if scheme == "per_channel" else default_dynamic_qconfig
    errors = {}
    with torch.inference_mode():
        for n in names:
            lin = model.get_submodule(n)
            q = quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear: qconfig}, dtype=torch.qint8)[0]
            ref = lin(inputs[n])
            errors[n] = float((q(inputs[n]) - ref).norm() / ref.norm().clamp(min=1e-12))
    return errors


class DynamicLinearCodec(Codec):
    """torch.ao dynamic int8 Linear <-> int8 weight + scales + zero points (+ bias)."""

    name = "torch.dynamic_int8_linear"

    @property
    def module_type(self) -> type:  # type: ignore[override]
        from torch.ao.nn.quantized.dynamic import Linear

        return Linear

    def encode(self, module: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        import torch

        w = module.weight()
        tensors = {"weight_int8": w.int_repr()}
        meta: dict[str, Any] = {"in_features": module.in_features, "out_features": module.out_features}
        if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            tensors["scales"] = w.q_per_channel_scales()
            tensors["zero_points"] = w.q_per_channel_zero_points()
            meta.update(scheme="per_channel", axis=int(w.q_per_channel_axis()))
        else:
            meta.update(scheme="per_tensor", scale=float(w.q_scale()), zero_point=int(w.q_zero_point()))
        if module.bias() is not None:
            tensors["bias"] = module.bias()
        return tensors, meta

    def decode(self, tensors: dict[str, Any], meta: dict[str, Any]) -> Any:
        import torch
        from torch.ao.nn.quantized.dynamic import Linear

        if meta["scheme"] == "per_channel":
            qw = torch._make_per_channel_quantized_tensor(
                tensors["weight_int8"], tensors["scales"], tensors["zero_points"], meta["axis"]
            )
        else:
            qw = torch._make_per_tensor_quantized_tensor(tensors["weight_int8"], meta["scale"], meta["zero_point"])
        module = Linear(meta["in_features"], meta["out_features"], dtype=torch.qint8)
        module.set_weight_bias(qw, tensors.get("bias"))
        return module


@autoslm.hookimpl
def register_techniques(register: Any) -> None:
    register(DynamicInt8)


@autoslm.hookimpl
def register_codecs(register: Any) -> None:
    register(DynamicLinearCodec())
