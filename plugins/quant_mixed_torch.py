"""quant.mixed_torch: a precision for every block Linear of the torch runtime, chosen from a measured sensitivity table.

The torch counterpart of quant.mixed (llama.cpp). The torch runtime has four precisions for a Linear layer:

  fp32   unchanged
  w8     int8 weights, fp32 activations (neural-compressor RTN, per-group scales): precise, not faster on a CPU
  int8   int8 weights and dynamic int8 activations (torch.ao, per-channel): the precision that speeds up decoding,
         but activation outliers make some layers much worse than others
  w4     int4 weights, fp32 activations (neural-compressor RTN, groups of 32): the smallest

The search sees five numbers, as for quant.mixed: a base precision, the share of the block weights raised (most
sensitive per value first) and to what, the share lowered (least sensitive first) and to what. `resolve` turns them
into `layers`, an explicit precision for every block Linear (named like GGUF tensors, blk.N.attn_v, so the report
draws the table and the choice as for llama.cpp), which the recipe records: a replay never measures again.

Sensitivity: the KL divergence on calibration text when only that Linear's weights are rounded to int4 in groups of
32 (round to nearest, symmetric: what w4 does), measured once per distinct model (`autoslm.sensitivity`, cached in
the process and in RUN/sensitivity/). It ranks weight rounding; int8's activation rounding is not in the probe.
The lm_head and embedding stay as they are (quant.dynamic_int8 / quant.weight_only offer an int8 head).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

import autoslm
from autoslm import ApplyContext, Categorical, Float, Stage, Technique, TechniqueConfig
from autoslm.errors import UserError
from autoslm.sensitivity import block_assignment, block_key, check_shares, describe_blocks
from autoslm.technique import scratch_cwd

Precision = Literal["fp32", "w8", "int8", "w4"]
RANK = {"w4": 0, "int8": 1, "w8": 2, "fp32": 3}  # how close to the fp32 layer each precision computes
PROBE = "w4-g32"


class MixedTorchConfig(TechniqueConfig):
    base: Precision = "int8"
    raise_fraction: float = Field(0.0, ge=0.0, le=1.0, description="share of block weights raised, most sensitive")
    raise_type: Precision = "fp32"
    lower_fraction: float = Field(0.0, ge=0.0, le=1.0, description="share of block weights lowered, least sensitive")
    lower_type: Precision = "w4"
    group_size: Literal[32, 64, 128] = Field(32, description="w4 / w8 groups")
    sensitivity_samples: int = Field(2, ge=1, le=64, description="calibration windows for the sensitivity table")
    sensitivity_seq_len: int = Field(128, ge=8, le=2048)
    layers: dict[str, Precision] = Field(
        default_factory=dict, description="the assignment, block Linear (blk.N.attn_v) -> precision (by the search)"
    )

    @field_validator("layers")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        return block_assignment(value, "layer")

    @model_validator(mode="after")
    def _shares(self) -> MixedTorchConfig:
        check_shares(self.raise_fraction, self.lower_fraction)
        return self


def block_linears(model: Any) -> dict[str, str]:
    """The model's block Linears: GGUF-style name (blk.N.attn_v) -> torch module name."""
    from autoslm.runtimes.llamacpp import gguf_linear_names

    names = {gguf: module for module, gguf in gguf_linear_names(model).items() if gguf.startswith("blk.")}
    return dict(sorted(names.items(), key=lambda kv: block_key(kv[0])))


def assign(table: Any, config: MixedTorchConfig) -> dict[str, str]:
    """Every Linear of `table` -> its precision: the most sensitive `raise_fraction` of the values at `raise_type`
    (only where that is closer to fp32 than the base), the least sensitive `lower_fraction` at `lower_type` (only
    where that is further), the rest at `base`. Deterministic: a function of the table and the config."""
    from autoslm.sensitivity import split

    up = RANK[config.raise_type] > RANK[config.base]
    down = RANK[config.lower_type] < RANK[config.base]
    raised, lowered = split(table, config.raise_fraction if up else 0.0, config.lower_fraction if down else 0.0)
    return {
        name: config.raise_type if name in raised else config.lower_type if name in lowered else config.base
        for name in sorted(table.ranked(), key=block_key)
    }


def fake_w4(weight: Any, group_size: int = 32) -> Any:
    """`weight` rounded to int4 per group of `group_size` input values (symmetric, round to nearest), in fp32."""
    import torch

    w = weight.float()
    rows, cols = w.shape
    if cols % group_size:
        return w
    g = w.reshape(rows, cols // group_size, group_size)
    scale = (g.abs().amax(-1, keepdim=True) / 7.0).clamp(min=1e-12)
    return (torch.clamp(torch.round(g / scale), -8, 7) * scale).reshape(rows, cols).to(weight.dtype)


class MixedPrecisionTorch(Technique):
    name = "quant.mixed_torch"
    stage = Stage.QUANTIZE
    description = "torch precision per block Linear (fp32 / w8 / dynamic int8 / w4) from a measured sensitivity table"
    requires_calibration = True
    incompatible_with = ("quant.dynamic_int8", "quant.weight_only", "cast.dtype")
    Config = MixedTorchConfig

    @classmethod
    def space(cls, info: dict[str, int], target: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "base": Categorical(choices=("int8", "w4", "w8")),
            "raise_fraction": Float(low=0.0, high=0.5),
            "raise_type": Categorical(choices=("fp32", "w8")),
            "lower_fraction": Float(low=0.0, high=0.5),
            "lower_type": Categorical(choices=("w4", "int8")),
        }

    def resolve(self, model: Any, config: MixedTorchConfig, ctx: ApplyContext) -> MixedTorchConfig:
        from autoslm import sensitivity

        linears = block_linears(model)
        if config.layers:
            _check_assignment(config.layers, linears)
            return config
        if config.raise_fraction == 0 and config.lower_fraction == 0:
            return self.make_config({**config.model_dump(), "layers": dict.fromkeys(linears, config.base)})
        modules = {module: name for name, module in linears.items()}
        perturb = lambda _n, w: fake_w4(w, config.group_size)  # noqa: E731
        table = sensitivity.cached_table(model, ctx, modules, PROBE if config.group_size == 32 else
                                         f"w4-g{config.group_size}", perturb, config.sensitivity_samples,
                                         config.sensitivity_seq_len)  # fmt: skip
        if set(table.kld) != set(linears):
            raise RuntimeError("the sensitivity table does not name this model's Linears")
        return self.make_config({**config.model_dump(), "layers": assign(table, config)})

    def apply(self, model: Any, config: MixedTorchConfig, ctx: ApplyContext) -> Any:
        import torch
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        if next(model.parameters()).dtype != torch.float32:
            raise ValueError("quant.mixed_torch needs an fp32 model (apply it before any precision cast)")
        linears = block_linears(model)
        layers = config.layers or dict.fromkeys(linears, config.base)
        _check_assignment(layers, linears)
        # torch.ao first: neural-compressor leaves `qconfig` attributes on the model that torch.ao would read
        dynamic = [linears[n] for n, p in layers.items() if p == "int8"]
        if dynamic:
            model = quantize_dynamic(model, dict.fromkeys(dynamic, per_channel_dynamic_qconfig), dtype=torch.qint8,
                                     inplace=True)  # fmt: skip
        for bits, kind in ((4, "w4"), (8, "w8")):
            names = [linears[n] for n, p in layers.items() if p == kind]
            if names:
                model = _weight_only(model, names, bits, config.group_size)
        return model.eval()


def _weight_only(model: Any, modules: list[str], bits: int, group_size: int) -> Any:
    """neural-compressor RTN on exactly `modules` (anchored names: blk.1 must not also take blk.10)."""
    from neural_compressor.torch.quantization import RTNConfig, convert, prepare

    exact = [re.escape(m) + "$" for m in modules]
    with scratch_cwd(prefix="autoslm-inc-"):
        qconfig = RTNConfig(bits=bits, group_size=group_size, use_sym=True, use_layer_wise=False, white_list=exact)
        return convert(prepare(model, qconfig))


def _check_assignment(layers: dict[str, str], linears: dict[str, str]) -> None:
    """A recorded assignment must name exactly this model's block Linears."""
    unknown = sorted(set(layers) - set(linears), key=block_key)
    missing = sorted(set(linears) - set(layers), key=block_key)
    if unknown or missing:
        what = f"names {len(unknown)} layer(s) this model does not have ({', '.join(unknown[:3])})" if unknown else (
            f"leaves out {len(missing)} of this model's layers ({', '.join(missing[:3])})")  # fmt: skip
        raise UserError(
            f"quant.mixed_torch: the assignment {what}; this model has {describe_blocks(linears)}: was the recipe "
            "made for another model, or after other pruning steps?"
        )


@autoslm.hookimpl
def register_techniques(register: Any) -> None:
    register(MixedPrecisionTorch)
