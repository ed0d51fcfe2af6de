"""quant.weight_only: neural-compressor 3.x weight-only quantization (RTN, GPTQ, AWQ; 4 or 8 bits; groups).

Weights are stored packed (int32 words holding 8 int4 or 4 int8 values) with fp16 scales (and zero points for
asymmetric schemes), so checkpoints really shrink. Activations stay fp32: on a CPU this saves memory and disk but
does not speed decoding (neural-compressor's layers dequantize on the fly and cache an fp32 weight on first use),
which the search has to learn from measurements, not from this docstring.

`include_lm_head` quantizes the output projection too; on a model with tied embeddings it is untied first (the
embedding stays fp32).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

import autoslm
from autoslm import ApplyContext, Categorical, Codec, Stage, Technique, TechniqueConfig
from autoslm.modeling import untie_lm_head
from autoslm.technique import scratch_cwd


class WeightOnlyConfig(TechniqueConfig):
    algorithm: Literal["rtn", "gptq", "awq"] = "rtn"
    bits: Literal[4, 8] = 4
    group_size: Literal[-1, 32, 64, 128] = Field(32, description="-1: one scale per output channel")
    sym: bool = True
    include_lm_head: bool = False
    calibration_samples: int = Field(16, ge=1, description="windows for GPTQ/AWQ (unused by RTN)")
    calibration_seq_len: int = Field(256, ge=8)


class WeightOnly(Technique):
    name = "quant.weight_only"
    stage = Stage.QUANTIZE
    description = "neural-compressor weight-only int4/int8 (RTN, GPTQ, AWQ), packed weights + scales"
    requires_calibration = True
    incompatible_with = ("quant.dynamic_int8", "cast.dtype")
    Config = WeightOnlyConfig

    @classmethod
    def space(cls, info: dict[str, int], target: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "algorithm": Categorical(choices=("rtn", "awq")),
            "bits": Categorical(choices=(4, 8)),
            "group_size": Categorical(choices=(32, 128)),
            "include_lm_head": Categorical(choices=(False, True)),
        }

    def apply(self, model: Any, config: WeightOnlyConfig, ctx: ApplyContext) -> Any:
        import torch
        from neural_compressor.torch.quantization import AWQConfig, GPTQConfig, RTNConfig, convert, prepare

        if next(model.parameters()).dtype != torch.float32:
            raise ValueError("quant.weight_only needs an fp32 model")
        common = {
            "bits": config.bits,
            "group_size": config.group_size,
            "use_sym": config.sym,
            "quant_lm_head": config.include_lm_head,
        }
        if config.include_lm_head:
            untie_lm_head(model)
        torch.manual_seed(ctx.seed)
        windows = ctx.calibration(config.calibration_samples, config.calibration_seq_len)
        with scratch_cwd(prefix="autoslm-inc-"):
            if config.algorithm == "rtn":
                qconfig: Any = RTNConfig(**common, use_layer_wise=False)
            elif config.algorithm == "gptq":
                qconfig = GPTQConfig(**common, use_layer_wise=False)
            else:
                qconfig = AWQConfig(**common, use_layer_wise=False)
            example = windows[:1] if config.algorithm == "awq" else None
            model = prepare(model, qconfig, example_inputs=example)
            if config.algorithm != "rtn":
                with torch.inference_mode():
                    for batch in windows.split(4):
                        model(input_ids=batch, use_cache=False)
            model = convert(model)
        return model.eval()


class WeightOnlyCodec(Codec):
    """neural-compressor's INCWeightOnlyLinear <-> its packed buffers (qweight, scales, qzeros, bias, g_idx)."""

    name = "inc.weight_only_linear"

    @property
    def module_type(self) -> type:  # type: ignore[override]
        from neural_compressor.torch.algorithms.weight_only.modules import INCWeightOnlyLinear

        return INCWeightOnlyLinear

    def encode(self, module: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        tensors = {k: v for k, v in module.state_dict().items()}
        meta = {
            "in_features": module.in_features,
            "out_features": module.out_features,
            "dtype": module.dtype,
            "bits": module.bits,
            "group_size": module.group_size,
            "zp": "qzeros" in tensors,
            "bias": "bias" in tensors,
            "g_idx": "g_idx" in tensors,
            "scale_dtype": str(module.scale_dtype).replace("torch.", ""),
            "compression_dtype": str(module.compression_dtype).replace("torch.", ""),
            "compression_dim": module.compression_dim,
            "use_optimum_format": module.use_optimum_format,
        }
        return tensors, meta

    def decode(self, tensors: dict[str, Any], meta: dict[str, Any]) -> Any:
        import torch
        from neural_compressor.torch.algorithms.weight_only.modules import INCWeightOnlyLinear

        module = INCWeightOnlyLinear(
            meta["in_features"],
            meta["out_features"],
            dtype=meta["dtype"],
            bits=meta["bits"],
            group_size=meta["group_size"],
            zp=meta["zp"],
            bias=meta["bias"],
            g_idx=meta["g_idx"],
            scale_dtype=getattr(torch, meta["scale_dtype"]),
            compression_dtype=getattr(torch, meta["compression_dtype"]),
            compression_dim=meta["compression_dim"],
            use_optimum_format=meta["use_optimum_format"],
        )
        module.load_state_dict(tensors, strict=True)
        return module


class AWQMulLinearCodec(Codec):
    """AWQ's input-scale wrapper (MulLinear) around a weight-only layer: the scale plus the inner layer's buffers.

    neural-compressor's `folding=True` would absorb the scales into the preceding RMSNorm, but on Llama it silently
    skipped them (results identical to RTN, measured), so the wrapper is kept and stored.
    """

    name = "inc.awq_mul_linear"

    @property
    def module_type(self) -> type:  # type: ignore[override]
        from neural_compressor.torch.algorithms.weight_only.modules import MulLinear

        return MulLinear

    def encode(self, module: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        inner, meta = WeightOnlyCodec().encode(module.linear)
        return {"input_scale": module.input_scale, **{f"linear.{k}": v for k, v in inner.items()}}, meta

    def decode(self, tensors: dict[str, Any], meta: dict[str, Any]) -> Any:
        from neural_compressor.torch.algorithms.weight_only.modules import MulLinear

        inner = {k.removeprefix("linear."): v for k, v in tensors.items() if k.startswith("linear.")}
        return MulLinear(WeightOnlyCodec().decode(inner, meta), input_scale=tensors["input_scale"])


@autoslm.hookimpl
def register_techniques(register: Any) -> None:
    register(WeightOnly)


@autoslm.hookimpl
def register_codecs(register: Any) -> None:
    register(WeightOnlyCodec())
    register(AWQMulLinearCodec())
