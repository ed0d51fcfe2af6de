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
