"""Shared fixtures. Tests use the tiny random Llama for speed; tests marked `real` use SmolLM2-135M itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _quiet() -> None:
    from autoslm.quiet import quiet_libraries

    quiet_libraries()


@pytest.fixture(scope="session")
def tiny():
    """A loaded tiny-llama (do not modify it: copy first, or use `fresh_tiny`)."""
    from autoslm.models import load_model

    return load_model("tiny-llama")


@pytest.fixture
def fresh_tiny():
    from autoslm.models import load_model

    return load_model("tiny-llama")


@pytest.fixture(scope="session")
def smollm():
    from autoslm.models import load_model

    return load_model("smollm2-135m")


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `autoslm ARGS` in a fresh process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "autoslm.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def tar_of(files: dict[str, bytes], kinds: dict[str, bytes] | None = None) -> bytes:
    """An upload as the agent receives it: an uncompressed tar of `files`, plus `kinds` (name -> tar member type,
    e.g. a symlink to /etc/passwd) for hostile members."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, kind in (kinds or {}).items():
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "/etc/passwd"
            tf.addfile(info)
    return buf.getvalue()


TOKENIZER_CODE = [
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < 1024; ++i) { x[i] = {3.14, 2e-5}; }\n\tif (a != b) return -1;",
    "It's 1999 -- they'd've said \"don't\"; we'll see. I'M SURE YOU'RE RIGHT.",
    "Café naïve Zürich — 日本語のテキスト, русский текст, 🙂🚀 ≤ ∞\r\n\n\n   indented   spaces",
    "x=[1,2,{3:'a'}]  # comment\n@decorator\nclass A(B):\n    pass\n\n\n",
]


def assert_same_tokens(gguf_file: Path, tokenizer) -> None:
    """llama.cpp's tokenization of a GGUF equals the Hugging Face tokenizer's, token for token, on 30,000
    characters of held-out prose and on code (digits, brackets, newlines, tabs, contractions, non-ASCII)."""
    from autoslm import data
    from autoslm.runtimes.llamacpp import open_gguf

    text = "\n\n".join(data.corpus_texts("heldout"))
    prose = [text[i : i + 3000] for i in range(0, 30000, 3000)]
    with open_gguf(gguf_file, n_ctx=64) as llm:
        add_bos = bool(llm.metadata.get("tokenizer.ggml.add_bos_token") == "true")
        for sample in [*prose, *TOKENIZER_CODE]:
            assert llm.tokenize(sample.encode(), add_bos=add_bos) == tokenizer(sample)["input_ids"], sample[:60]
