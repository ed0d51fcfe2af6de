"""Offline corpora shipped with autoslm, and the same API for online Hugging Face datasets.

Shipped (derived by scripts/derive_data.py, sha256 recorded in MANIFEST.json and verified on first load):

  calibration   State of the Union addresses 1946-2009 (CC0): calibration data for techniques
  heldout       Persuasion + Northanger Abbey (public domain): held-out perplexity
  hyperbaton    1,000 BIG-bench adjective-order pairs: zero-shot task scored by likelihood
  cloze         last-word cloze on held-out Austen paragraphs: zero-shot task scored by greedy match

Online (needs `pip install datasets` and internet): `hf:PATH[:CONFIG]:SPLIT[:COLUMN]`, e.g.
`hf:wikitext:wikitext-2-raw-v1:test`.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoslm.errors import ChecksumError, UserError

if TYPE_CHECKING:
    import torch

DATA_DIR = Path(__file__).parent
CORPORA = {"calibration": "calibration-sotu", "heldout": "heldout-austen"}
TASKS = {"hyperbaton": "task-hyperbaton", "cloze": "task-cloze"}
SEPARATOR = "\n\n"


@functools.cache
def manifest() -> dict[str, Any]:
    return json.loads((DATA_DIR / "MANIFEST.json").read_text())


def read_records(name: str, *, data_dir: Path | None = None) -> list[dict[str, Any]]:
    """Read a shipped JSONL.gz file after checking its sha256 against the manifest."""
    entry = manifest()["files"].get(name)
    if entry is None:
        raise UserError(f"unknown data file '{name}': shipped files are {', '.join(manifest()['files'])}")
    path = (data_dir or DATA_DIR) / entry["file"]
    if not path.is_file():
        raise ChecksumError(f"data file {path} is missing: reinstall autoslm (or run `make data`)")
    blob = path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != entry["sha256"]:
        raise ChecksumError(
            f"data file {path} does not match its recorded sha256 (corrupted or edited): "
            "reinstall autoslm or re-derive it with `make data`"
        )
    return [json.loads(line) for line in gzip.decompress(blob).decode("utf-8").splitlines() if line]


@functools.cache
def corpus_texts(name: str) -> tuple[str, ...]:
    """Documents of a corpus, in a fixed order: a shipped name or an `hf:` dataset."""
    if name.startswith("hf:"):
        return _hf_texts(name)
    if name not in CORPORA:
        raise UserError(f"unknown corpus '{name}': use {', '.join(CORPORA)} or hf:PATH[:CONFIG]:SPLIT")
    return tuple(r["text"] for r in read_records(CORPORA[name]))


def load_task(name: str) -> list[dict[str, Any]]:
    if name not in TASKS:
        raise UserError(f"unknown task '{name}': use {', '.join(TASKS)}")
    return read_records(TASKS[name])


def corpus_sha256(name: str) -> str:
    """Identity of a corpus for recipes: the manifest checksum, or a hash of the downloaded text."""
    if name in CORPORA:
        return manifest()["files"][CORPORA[name]]["sha256"]
    return hashlib.sha256(SEPARATOR.join(corpus_texts(name)).encode()).hexdigest()


def _tokenizer_key(tokenizer: Any) -> tuple[Any, ...]:
    return (type(tokenizer).__name__, getattr(tokenizer, "name_or_path", ""), len(tokenizer))


_TOKEN_CACHE: dict[tuple[Any, ...], Any] = {}


def corpus_ids(tokenizer: Any, name: str) -> list[int]:
    """The whole corpus's token ids (documents joined by a blank line), without torch; cached per tokenizer."""
    key = ("ids", name, *_tokenizer_key(tokenizer))
    if key not in _TOKEN_CACHE:
        _TOKEN_CACHE[key] = list(tokenizer(SEPARATOR.join(corpus_texts(name)), add_special_tokens=False)["input_ids"])
    return _TOKEN_CACHE[key]


def corpus_tokens(tokenizer: Any, name: str) -> torch.Tensor:
    """The whole corpus as one 1-D token tensor (documents joined by a blank line); cached per tokenizer."""
    import torch

    key = (name, *_tokenizer_key(tokenizer))
    if key not in _TOKEN_CACHE:
        _TOKEN_CACHE[key] = torch.tensor(corpus_ids(tokenizer, name), dtype=torch.long)
    return _TOKEN_CACHE[key]


def text_prefix(tokenizer: Any) -> list[int]:
    """The token ids the tokenizer itself puts before any text (Gemma's `<bos>`; nothing for SmolLM2, whose
    tokenizer adds no BOS): every window and task prompt starts with them, as the model saw text in training.
    Scoring Gemma-3-270M without its `<bos>` read perplexity 171.5 instead of 56.5 on the same windows."""
    key = ("prefix", *_tokenizer_key(tokenizer))
    if key not in _TOKEN_CACHE:
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        full = tokenizer("a", add_special_tokens=True)["input_ids"]
        starts = [k for k in range(len(full) - len(plain) + 1) if full[k : k + len(plain)] == plain]
        _TOKEN_CACHE[key] = list(full[: starts[0]]) if starts else []
    return list(_TOKEN_CACHE[key])


def token_windows(tokenizer: Any, name: str, *, seq_len: int, count: int, seed: int = 0) -> torch.Tensor:
    """`count` non-overlapping windows of `seq_len` tokens, chosen by a seeded permutation: shape (count, seq_len).
    Each starts with the tokenizer's own prefix (`text_prefix`, e.g. BOS), followed by corpus tokens.

    The same (tokenizer, corpus, seq_len, count, seed) always gives the same tensor, and a smaller `count` gives a
    prefix of a larger one, so low-fidelity estimates are a subset of the full evaluation.
    """
    import numpy as np
    import torch

    prefix = text_prefix(tokenizer)
    if seq_len < 2 + len(prefix) or count < 1:
        raise UserError(
            f"token windows need seq_len >= {2 + len(prefix)} and count >= 1 (got seq_len={seq_len}, count={count})"
        )
    tokens = corpus_tokens(tokenizer, name)
    body = seq_len - len(prefix)
    available = tokens.numel() // body
    if count > available:
        raise UserError(
            f"corpus '{name}' has {tokens.numel()} tokens: only {available} windows of {seq_len}, asked for {count}"
        )
    order = np.random.default_rng(seed).permutation(available)[:count]
    windows = tokens[: available * body].view(available, body)[order.tolist()]
    if prefix:
        windows = torch.cat([torch.tensor(prefix, dtype=torch.long).expand(count, -1), windows], dim=1)
    return windows.clone()


def _hf_texts(name: str) -> tuple[str, ...]:
    parts = name[3:].split(":")
    if len(parts) < 2:
        raise UserError(
            f"dataset '{name}': use hf:PATH[:CONFIG]:SPLIT[:COLUMN], e.g. hf:wikitext:wikitext-2-raw-v1:test"
        )
    column = "text"
    if len(parts) == 4:
        path, config, split, column = parts
    elif len(parts) == 3:
        path, config, split = parts
    else:
        (path, split), config = parts, None
    try:
        import datasets
    except ImportError as exc:
        raise UserError(f"dataset '{name}' needs the `datasets` package: pip install 'autoslm[online]'") from exc
    try:
        ds = datasets.load_dataset(path, config, split=split)
    except Exception as exc:
        raise UserError(f"could not load dataset '{name}' ({type(exc).__name__}: {exc})") from exc
    if column not in ds.column_names:
        raise UserError(f"dataset '{name}' has no column '{column}': columns are {', '.join(ds.column_names)}")
    return tuple(t for t in ds[column] if t and t.strip())
