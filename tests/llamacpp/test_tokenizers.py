"""Tokenization identical: llama.cpp's tokenization of the exported GGUF equals the Hugging Face tokenizer's, token
for token, on held-out prose and on code (digits, brackets, newlines, tabs, contractions, non-ASCII), for every
tokenizer available here: SmolLM2's (the tiny models use it) here; Gemma-3's in tests/test_gemma3.py (beside the
conversion it shares with other checks); each family's in tests/llamacpp/test_families.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assert_same_tokens

from autoslm.models import load_model
from autoslm.runtimes import get_runtime
from autoslm.runtimes.llamacpp import GGUF, open_gguf

pytest.importorskip("llama_cpp")


def _check(lm, tmp_path: Path) -> None:
    directory = get_runtime("llama.cpp").save(lm.model, lm.tokenizer, tmp_path / "f32", [])
    assert_same_tokens(directory / GGUF, lm.tokenizer)


def test_smollm2_tokenizer_is_identical_in_llamacpp(tmp_path: Path) -> None:
    _check(load_model("tiny-llama"), tmp_path)  # SmolLM2's own tokenizer files


def test_known_divergence_vulgar_fractions_in_smollm_pre_tokenizer(tmp_path: Path) -> None:
    """Found here: llama.cpp's `smollm` pre-tokenizer (which the converter rightly recognises) counts '½' (Unicode
    No) as a digit and splits it from the space before it; transformers keeps ' ½' together. Kept as a test so the
    day llama.cpp agrees, this fails and the note in docs/runtimes.md goes."""
    lm = load_model("tiny-llama")
    directory = get_runtime("llama.cpp").save(lm.model, lm.tokenizer, tmp_path / "f32", [])
    with open_gguf(directory / GGUF, n_ctx=64) as llm:
        assert llm.tokenize(" ½".encode(), add_bos=False) != lm.tokenizer(" ½")["input_ids"]
        assert llm.tokenize("1½2".encode(), add_bos=False) == lm.tokenizer("1½2")["input_ids"]
