"""quant.mixed: a llama.cpp type for every weight tensor, chosen from a measured sensitivity table.

A model of 30 blocks x 7 tensors cannot be searched tensor by tensor in 30 trials, so the search sees five
numbers and the technique turns them into an explicit assignment:

  base             the type of every block tensor not raised or lowered (Q4_K, Q4_0, Q3_K, ...)
  base_fallback    what a k-quant base becomes on tensors whose rows are not a multiple of 256 values (None:
                     llama.cpp's own fallback, Q4_K -> Q5_0; Q4_0 keeps such tensors at 4.5 bits with the fast
                     kernels, as llama.cpp's Q3_K_M does on SmolLM2 while its ffn_down gets Q4_K)
  raise_fraction   the share of the block weights (by number of values), most sensitive per value first, that gets
  raise_type         this higher type (Q6_K, Q8_0, ...)
  lower_fraction   the share, least sensitive first, that gets
  lower_type         this lower type
  token_embd_type / output_type / imatrix   as in quant.gguf

Sensitivity: for each block tensor, the KL divergence of the next-token distribution on calibration text when only
that tensor is quantized to Q4_0 (llama.cpp's own rounding, `fake_quantize`), in torch on the model as the earlier
steps left it (`autoslm.sensitivity`), once per distinct model: cached in the process and in the run directory
(`RUN/sensitivity/<fingerprint>-2x128-e4.json`, drawn in the report). By default it is estimated to second order
from 4 backward passes (`sensitivity_draws`: the Fisher information's diagonal times each value's rounding change),
every tensor at once: SmolLM2-135M's 210 tensors in 10 s instead of 103 s measured one forward pass per tensor
(`sensitivity_draws: 0`), ranked alike (Spearman 0.978; Gemma-3-270M: 0.960, 18 s instead of 191 s;
benchmarks/sensitivity_cost.py).

`resolve` writes the assignment into `tensors` (every block tensor -> its type), which the recipe records: a replay
quantizes exactly those types and never measures sensitivity again. A k-quant type on a tensor whose rows are not a
multiple of 256 values becomes llama.cpp's own fallback for it (Q4_K -> Q5_0, Q3_K -> Q4_0, ...), written in the
assignment as such.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from autoslm_plugins.quant_gguf import TensorType  # every llama.cpp tensor type, the fallbacks included
from pydantic import Field, field_validator, model_validator

import autoslm
from autoslm import ApplyContext, Categorical, Float, Stage, Technique, TechniqueConfig
from autoslm.errors import UserError
from autoslm.sensitivity import block_assignment, block_key, check_shares, describe_blocks

BlockType = Literal["Q8_0", "Q6_K", "Q5_K", "Q5_0", "Q4_K", "Q4_0", "IQ4_NL", "Q3_K", "Q2_K"]
FallbackType = Literal["Q8_0", "Q5_1", "Q5_0", "Q4_0", "IQ4_NL"]  # the types any row of a multiple of 32 takes

# the whole-model type handed to llama.cpp beside the per-tensor assignment (it decides only what is not assigned)
FTYPE = {"Q8_0": "Q8_0", "Q6_K": "Q6_K", "Q5_K": "Q5_K_M", "Q5_0": "Q5_0", "Q4_K": "Q4_K_M", "Q4_0": "Q4_0",
         "IQ4_NL": "IQ4_NL", "Q3_K": "Q3_K_M", "Q2_K": "Q2_K"}  # fmt: skip
PROBE = "Q4_0"  # the type sensitivity is measured at: valid for every row length llama.cpp takes (multiples of 32)


class MixedPrecisionConfig(TechniqueConfig):
    base: BlockType = "Q4_K"
    base_fallback: FallbackType | None = Field(
        None,
        description="the base's type on rows not a multiple of 256 values, when the base is a k-quant "
        "(None: llama.cpp's fallback)",
    )
    raise_fraction: float = Field(0.0, ge=0.0, le=1.0, description="share of block weights raised, most sensitive")
    raise_type: BlockType = "Q6_K"
    lower_fraction: float = Field(0.0, ge=0.0, le=1.0, description="share of block weights lowered, least sensitive")
    lower_type: BlockType = "Q3_K"
    token_embd_type: TensorType | None = Field(None, description="token_embd.weight (None: llama.cpp's choice)")
    output_type: TensorType | None = Field(None, description="output.weight (None: llama.cpp's choice)")
    imatrix: bool = False
    imatrix_samples: int = Field(16, ge=1, le=512)
    imatrix_seq_len: int = Field(256, ge=8, le=4096)
    sensitivity_samples: int = Field(2, ge=1, le=64, description="calibration windows for the sensitivity table")
    sensitivity_seq_len: int = Field(128, ge=8, le=2048)
    sensitivity_draws: int = Field(
        4,
        ge=0,
        le=64,
        description="N: estimate every tensor's KL divergence from N backward passes (autoslm.sensitivity.estimate; "
        "10x cheaper than measuring, Spearman 0.96-0.98 against it on SmolLM2 and Gemma-3); 0: measure it, one "
        "forward pass per tensor",
    )
    tensors: dict[str, TensorType] = Field(
        default_factory=dict, description="the assignment, block tensor -> type (written by the search)"
    )

    @field_validator("tensors")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        return block_assignment(value, "tensor")

    @model_validator(mode="after")
    def _shares(self) -> MixedPrecisionConfig:
        check_shares(self.raise_fraction, self.lower_fraction)
        return self

    def quantize_settings(self) -> dict[str, Any]:
        """The llama.cpp runtime's quantize() settings: every assigned tensor as an override."""
        return {
            "type": FTYPE[self.base],
            "output_type": self.output_type,
            "token_embd_type": self.token_embd_type,
            "overrides": dict(self.tensors),
            "imatrix": self.imatrix,
            "imatrix_samples": self.imatrix_samples,
            "imatrix_seq_len": self.imatrix_seq_len,
        }


def block_tensors(model: Any) -> dict[str, tuple[str, int, int]]:
    """The model's block weight tensors as GGUF names: name -> (torch module, values, row length). `model`: a torch
    model, or `ModelFiles` (the matrices of its weight files, read from their headers: nothing is loaded)."""
    from autoslm.models import ModelFiles, weight_shapes
    from autoslm.runtimes.llamacpp import gguf_linear_names, gguf_weight_names

    if isinstance(model, ModelFiles):
        shapes = {
            name.removesuffix(".weight"): shape
            for name, shape in weight_shapes(model.source_dir).items()
            if name.endswith(".weight") and len(shape) == 2
        }
        found = {module: (name, shapes[module]) for module, name in gguf_weight_names(model.config, shapes).items()}
    else:
        found = {
            module: (name, tuple(model.get_submodule(module).weight.shape))
            for module, name in gguf_linear_names(model).items()
        }
    out = {name: (module, shape[0] * shape[1], shape[1]) for module, (name, shape) in found.items()}
    return dict(sorted(((k, v) for k, v in out.items() if k.startswith("blk.")), key=lambda kv: block_key(kv[0])))


def assign(table: Any, config: MixedPrecisionConfig, rows: dict[str, int]) -> dict[str, str]:
    """Every tensor of `table` -> its type: the most sensitive (per value) `raise_fraction` of the values at
    `raise_type`, the least sensitive `lower_fraction` at `lower_type`, the rest at `base`; a k-quant on rows that
    are not a multiple of 256 (`rows`: tensor -> row length) becomes llama.cpp's fallback for it (the base:
    `base_fallback` where given). A tensor is
    raised (lowered) only where that gives it more (fewer) bits than the base does after the fallbacks: on
    SmolLM2, Q3_K lowers only ffn_down (1536-value rows); elsewhere it would fall back to Q4_0, no smaller than a
    Q4_0 or IQ4_NL base, and spend the share on nothing. Deterministic: a function of the table and the config only."""
    from autoslm.runtimes.llamacpp import K_FALLBACK, TYPE_BITS
    from autoslm.sensitivity import split

    def fits(kind: str, name: str) -> str:
        if kind not in K_FALLBACK or rows[name] % 256 == 0:
            return kind
        return config.base_fallback if kind == config.base and config.base_fallback else K_FALLBACK[kind]

    def bits(kind: str, name: str) -> float:
        return TYPE_BITS[fits(kind, name)]

    up = lambda n: bits(config.raise_type, n) > bits(config.base, n)  # noqa: E731
    down = lambda n: bits(config.lower_type, n) < bits(config.base, n)  # noqa: E731
    raised, lowered = split(table, config.raise_fraction, config.lower_fraction, up, down)
    out = {}
    for name in sorted(table.ranked(), key=block_key):
        kind = config.raise_type if name in raised else config.lower_type if name in lowered else config.base
        out[name] = fits(kind, name)
    return out


def sensitivity_table(model: Any, ctx: ApplyContext, samples: int, seq_len: int, draws: int = 0) -> Any:
    """The model's sensitivity table at PROBE (llama.cpp's own rounding): cached, or measured (estimated from
    `draws` backward passes) and stored."""
    from autoslm import sensitivity
    from autoslm.runtimes.llamacpp import fake_quantize

    tensors = {module: name for name, (module, _, _) in block_tensors(model).items()}
    perturb = lambda _n, w: fake_quantize(w, PROBE)  # noqa: E731
    return sensitivity.cached_table(model, ctx, tensors, PROBE, perturb, samples, seq_len, draws=draws)


class MixedPrecision(Technique):
    name = "quant.mixed"
    stage = Stage.EXPORT
    runtime = "llama.cpp"
    description = "llama.cpp type per weight tensor from a measured sensitivity table (base, raise/lower shares)"
    requires_calibration = True
    incompatible_with = ("quant.gguf",)
    # tensor names and shapes come from the weight files; the torch model is loaded only while a sensitivity table
    # is made, and let go (a search of quant.mixed alone never holds it: 6 GB in fp32 for a 1.5B model)
    needs_torch_model = False
    Config = MixedPrecisionConfig
    # starting points for the warm start: every weight at 4.5 bits, and a sensitivity-balanced mix on Q4_0 (the
    # fastest 4.5-bit kernels here) at about the same bits (the most sensitive 15% of the block weights one bit
    # up, the least sensitive 20% one down), with llama.cpp's embedding type and with a 4.5-bit one (the embedding
    # is a fifth of SmolLM2's weights); and Q3_K_M's bits placed by sensitivity: its structure on rows a k-quant cannot
    # pack (Q4_K where it can, Q4_0 elsewhere) with the share it gives a bit more (1/8 of the block weights: attn_v
    # and attn_output on SmolLM2) given to the most sensitive tensors instead of to two tensor classes
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "IQ4_NL-everywhere+imatrix": {"base": "IQ4_NL", "token_embd_type": "Q4_0", "imatrix": True},
        "balanced+imatrix": {"base": "Q4_0", "raise_fraction": 0.15, "raise_type": "Q5_0", "lower_fraction": 0.2,
                             "lower_type": "Q3_K", "imatrix": True},
        "balanced-small+imatrix": {"base": "Q4_0", "raise_fraction": 0.15, "raise_type": "Q5_0",
                                   "lower_fraction": 0.2, "lower_type": "Q3_K", "token_embd_type": "Q4_0",
                                   "imatrix": True},
        "Q3_K_M-by-sensitivity+imatrix": {"base": "Q4_K", "base_fallback": "Q4_0", "raise_fraction": 0.125,
                                          "raise_type": "Q5_0", "imatrix": True},
    }  # fmt: skip

    @classmethod
    def space(cls, info: dict[str, int], target: dict[str, Any] | None = None) -> dict[str, Any]:
        from autoslm.runtimes.llamacpp import embedding_types

        embd = embedding_types(info.get("hidden_size", 256))
        return {
            "base": Categorical(choices=("Q5_K", "Q4_K", "Q4_0", "IQ4_NL", "Q3_K")),
            "base_fallback": Categorical(choices=(None, "Q4_0", "IQ4_NL")),
            "raise_fraction": Float(low=0.0, high=0.5),
            "raise_type": Categorical(choices=("Q5_0", "Q5_K", "Q6_K", "Q8_0")),
            "lower_fraction": Float(low=0.0, high=0.5),
            "lower_type": Categorical(choices=("Q4_0", "Q3_K", "Q2_K")),
            "token_embd_type": Categorical(choices=(None, *embd)),
            "imatrix": Categorical(choices=(False, True)),
        }

    def resolve(self, model: Any, config: MixedPrecisionConfig, ctx: ApplyContext) -> MixedPrecisionConfig:
        from autoslm.runtimes.llamacpp import K_FALLBACK

        tensors = block_tensors(model)
        rows = {name: row for name, (_, _, row) in tensors.items()}
        if config.tensors:
            _check_assignment(config.tensors, rows)
            return config
        if config.base not in K_FALLBACK or all(row % 256 == 0 for row in rows.values()):
            config = config.model_copy(update={"base_fallback": None})  # no k-quant base falls back: say so
        if config.raise_fraction == 0 and config.lower_fraction == 0:
            table = _Uniform(tensors)  # nothing to rank: no sensitivity needed
        else:
            table = sensitivity_table(
                model, ctx, config.sensitivity_samples, config.sensitivity_seq_len, config.sensitivity_draws
            )
            if set(table.kld) != set(tensors):
                raise RuntimeError("the sensitivity table does not name this model's tensors")
        # validated like any recorded config: what the recipe will hold must load back
        return self.make_config({**config.model_dump(), "tensors": assign(table, config, rows)})

    def apply(self, model: Any, config: MixedPrecisionConfig, ctx: ApplyContext) -> Any:
        return model  # the llama.cpp runtime quantizes the GGUF it writes, tensor by tensor (quantize_settings)


class _Uniform:
    """A table in which no tensor is more sensitive than another (all at base: the ranking is never used)."""

    def __init__(self, tensors: dict[str, tuple[str, int, int]]):
        self.numel = {name: n for name, (_, n, _) in tensors.items()}

    def ranked(self) -> list[str]:
        return sorted(self.numel, key=block_key)


def _check_assignment(tensors: dict[str, str], rows: dict[str, int]) -> None:
    """A recorded assignment must name this model's tensors, with types their rows allow."""
    from autoslm.runtimes.llamacpp import K_TYPES

    unknown = sorted(set(tensors) - set(rows), key=block_key)
    if unknown:
        raise UserError(
            f"quant.mixed: the assignment names {len(unknown)} tensor(s) this model does not have "
            f"({', '.join(unknown[:3])}{', ...' if len(unknown) > 3 else ''}); this model has {describe_blocks(rows)}:"
            " was the recipe made for another model, or after other pruning steps?"
        )
    for name, kind in tensors.items():
        if kind in K_TYPES and rows[name] % 256:
            raise UserError(
                f"quant.mixed: {name} cannot be {kind}: its rows hold {rows[name]} values, not a multiple of 256; "
                "use Q8_0, Q5_0, Q4_0 or IQ4_NL for it"
            )


@autoslm.hookimpl
def register_techniques(register: Any) -> None:
    register(MixedPrecision)
