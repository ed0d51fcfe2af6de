"""Tokenization identical: llama.cpp's tokenization of the exported GGUF equals the Hugging Face tokenizer's, token
for token, on held-out prose and on code (digits, brackets, newlines, tabs, contractions, non-ASCII), for every
tokenizer available here: SmolLM2's (the tiny models' too) and Gemma-3's."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoslm import data
from autoslm.models import load_model
from autoslm.runtimes import get_runtime
from autoslm.runtimes.llamacpp import GGUF, open_gguf

pytest.importorskip("llama_cpp")
CODE = [
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < 1024; ++i) { x[i] = {3.14, 2e-5}; }\n\tif (a != b) return -1;",
    "It's 1999 -- they'd've said \"don't\"; we'll see. I'M SURE YOU'RE RIGHT.",
    "Café naïve Zürich — 日本語のテキスト, русский текст, 🙂🚀 ≤ ∞\r\n\n\n   indented   spaces",
    "x=[1,2,{3:'a'}]  # comment\n@decorator\nclass A(B):\n    pass\n\n\n",
]


def _prose() -> list[str]:
    text = "\n\n".join(data.corpus_texts("heldout"))
    return [text[i : i + 3000] for i in range(0, 30000, 3000)]


def _check(lm, tmp_path: Path) -> None:
    directory = get_runtime("llama.cpp").save(lm.model, lm.tokenizer, tmp_path / "f32", [])
    with open_gguf(directory / GGUF, n_ctx=64) as llm:
        for text in [*_prose(), *CODE]:
            hf = lm.tokenizer(text)["input_ids"]
            ours = llm.tokenize(text.encode(), add_bos=bool(llm.metadata.get("tokenizer.ggml.add_bos_token") == "true"))
            assert ours == hf, text[:60]


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


@pytest.mark.real
def test_gemma3_tokenizer_is_identical_in_llamacpp(tmp_path: Path) -> None:
    _check(load_model("gemma3-270m"), tmp_path)
