"""Checkpoint directories: safetensors weights + config + tokenizer, with a manifest of sha256 per file.

Loading never unpickles: weights come from safetensors only, and a file that does not match the manifest
(truncated or tampered) is refused before anything is read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoslm.errors import ChecksumError, UserError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

MANIFEST = "autoslm-manifest.json"
FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_size_mb(directory: Path) -> float:
    """Size on disk of the weight files (what `size_mb` reports)."""
    return sum(p.stat().st_size for p in Path(directory).glob("*.safetensors")) / 2**20


def save_dir(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, directory: Path, **meta: Any) -> Path:
    """Save `model` (safetensors) and tokenizer, then write the manifest of file checksums."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    files = {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = {"format_version": FORMAT_VERSION, "files": files, **meta}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return directory


def verify_dir(directory: Path) -> dict[str, Any] | None:
    """Check every file listed in the manifest; return the manifest (None for a plain Hugging Face directory)."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ChecksumError(f"checkpoint '{directory}': {MANIFEST} is unreadable ({exc}); re-export it") from exc
    for name, digest in files.items():
        f = Path(directory) / name
        if not f.is_file():
            raise ChecksumError(f"checkpoint '{directory}': {name} is missing; re-export the checkpoint")
        if sha256_file(f) != digest:
            raise ChecksumError(
                f"checkpoint '{directory}': {name} does not match its sha256 (truncated or modified); re-export it"
            )
    return manifest


def load_model(directory: Path, *, dtype: str | torch.dtype = "auto", verify: bool = True) -> PreTrainedModel:
    """Load the model of a checkpoint or Hugging Face directory (safetensors only, never pickle)."""
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    if verify:
        verify_dir(directory)
    if not any(directory.glob("*.safetensors")):
        raise UserError(
            f"model directory '{directory}' has no .safetensors weights: autoslm never loads pickled weights; "
            "convert them with transformers' save_pretrained(safe_serialization=True)"
        )
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, use_safetensors=True)
    return model.eval()


def load_tokenizer(directory: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(Path(directory))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_dir(directory: Path, *, dtype: str | torch.dtype = "auto") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load model + tokenizer from a checkpoint or Hugging Face directory (safetensors only, never pickle)."""
    return load_model(directory, dtype=dtype), load_tokenizer(directory)
