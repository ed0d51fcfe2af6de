"""Small model surgery that several techniques need, written once."""

from __future__ import annotations

from typing import Any


def untie_lm_head(model: Any) -> bool:
    """Give the output projection its own copy of the (tied) embedding, so one can be compressed without the other.
    Returns whether the model was tied. The config is updated, so the saved checkpoint stays untied."""
    import torch

    if not getattr(model.config, "tie_word_embeddings", False):
        return False
    head = model.get_output_embeddings()
    head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    model.config.tie_word_embeddings = False
    return True


def norm_offset(norm: Any) -> float:
    """How an RMSNorm applies its weight: 0.0 when it multiplies by `weight` (Llama), 1.0 when by `1 + weight`
    (Gemma). Found by running the norm with its weight zeroed (the weight is restored), not from its class name."""
    import torch

    with torch.no_grad():
        saved = norm.weight.detach().clone()
        norm.weight.zero_()
        try:
            out = norm(torch.ones(1, saved.shape[-1], dtype=saved.dtype))
        finally:
            norm.weight.copy_(saved)
    return 0.0 if float(out.abs().max()) == 0.0 else 1.0


def divide_norm_output(norm: Any, scale: Any) -> None:
    """Make the norm's output `scale` times smaller per channel, in its own weight convention (`norm_offset`)."""
    import torch

    offset = norm_offset(norm)
    with torch.no_grad():
        norm.weight.copy_((norm.weight.float() + offset) / scale - offset)


def block_norms(layer: Any) -> tuple[Any, Any]:
    """The norms whose outputs feed a decoder block's attention projections and its MLP's gate/up projections.
    Llama: input_layernorm and post_attention_layernorm; Gemma-2/3 normalise the attention output with
    post_attention_layernorm and feed the MLP from pre_feedforward_layernorm."""
    mlp_norm = getattr(layer, "pre_feedforward_layernorm", None)
    return layer.input_layernorm, mlp_norm if mlp_norm is not None else layer.post_attention_layernorm
