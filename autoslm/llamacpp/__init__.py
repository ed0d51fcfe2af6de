"""llama.cpp's side of autoslm: Hugging Face checkpoints -> GGUF by llama.cpp's own converter (the runtime's commit,
`source.py`), the little an architecture needs beyond it (`architectures.py`), and gguf-py's type tables
(`types.py`). The runtime that runs GGUFs is `autoslm/runtimes/llamacpp.py`.

    refusal(config)                 why llama.cpp cannot take this config.json (decided before loading anything)
    export_gguf(directory, dest)    a checkpoint directory (safetensors, one file or sharded) -> one .gguf file
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autoslm.errors import UserError
from autoslm.llamacpp.architectures import gguf_arch_name, glue, hf_architecture
from autoslm.llamacpp.converter import convert
from autoslm.llamacpp.source import text_architectures

DTYPES = ("F32", "F16", "BF16")


def config_of(model_or_config: Any) -> dict[str, Any]:
    """config.json as a dict, from a dict, a transformers config or a model."""
    if isinstance(model_or_config, dict):
        return model_or_config
    config = getattr(model_or_config, "config", model_or_config)
    return config.to_dict() if hasattr(config, "to_dict") else {}


def refusal(config: Any) -> str | None:
    """Why llama.cpp cannot run a model with this config (None: it can), from config.json alone."""
    config = config_of(config)
    names = config.get("architectures")
    if hf_architecture(config) is None:
        return (f"llama.cpp's converter (llama-cpp-python {_version()}) knows no text architecture "
                f"{names or '(config.json names none)'}: use --runtime torch for this model")  # fmt: skip
    return glue(config).check()


def refuses_block_removal(config: Any) -> str | None:
    """Why removing whole blocks from this model would not run faithfully in llama.cpp (None: it would)."""
    return glue(config_of(config)).refuses_block_removal()


def gguf_arch(config: Any) -> Any:
    """The `gguf.MODEL_ARCH` llama.cpp runs this model as (from the converter's class for its architecture)."""
    import gguf

    name = hf_architecture(config_of(config))
    if name is None:
        raise UserError(refusal(config) or "no architecture")
    return getattr(gguf.MODEL_ARCH, gguf_arch_name(name))


def check_files(directory: Path) -> None:
    """Raise a UserError, in one line, if llama.cpp's converter would refuse the model in `directory`: its
    architecture (config.json), or its tokenizer (the converter's own reading of it: a BPE pre-tokenizer it does not
    recognise by hash). A few seconds; writes nothing. Asked before a search or a first export does any work."""
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    reason = refusal(config)
    if reason:
        raise UserError(f"model '{directory}' cannot be exported to GGUF: {reason}")
    _convert(directory, directory / ".autoslm-vocab-check.gguf", "VOCAB", config)


def export_gguf(directory: Path, dest: Path, dtype: str = "F32") -> Path:
    """Write `dest` (a .gguf file) from the checkpoint in `directory` with llama.cpp's converter; returns `dest`.
    Deterministic: the same checkpoint gives the same bytes."""
    directory, dest = Path(directory), Path(dest)
    if dtype not in DTYPES:
        raise UserError(f"GGUF type '{dtype}' is not one export writes: use one of {', '.join(DTYPES)}")
    config = json.loads((directory / "config.json").read_text())
    reason = refusal(config)
    if reason:
        raise UserError(f"checkpoint '{directory}' cannot be exported to GGUF: {reason}")
    _refuse_torch_modules(directory)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return _convert(directory, dest, dtype, config)


def _convert(directory: Path, dest: Path, dtype: str, config: dict[str, Any]) -> Path:
    """Run the converter in its process (converter.py); a refusal it states becomes one UserError line."""
    arch = glue(config)
    vocab = "_set_vocab_none" if config.get("autoslm_gguf_vocab") is False else arch.vocab_method(directory)
    extras = {**arch.extra_keys(), "__vocab__": vocab}
    if vocab == "_set_vocab_none":  # a tiny test model (families.py): llama.cpp sizes the embedding from this key
        extras["add_vocab_size"] = int(config["vocab_size"])
    try:
        convert(directory, dest, dtype, extras)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return dest


def _refuse_torch_modules(directory: Path) -> None:
    from autoslm import checkpoint

    path = directory / checkpoint.MANIFEST
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    if manifest.get("modules"):
        coded = sorted({m["codec"] for m in manifest["modules"].values()})
        raise UserError(
            f"checkpoint '{directory}' holds modules only the torch runtime runs ({', '.join(coded)}): "
            "llama.cpp quantizes on its own (technique quant.gguf)"
        )


def _version() -> str:
    from autoslm.llamacpp.source import runtime_version

    return runtime_version()


__all__ = ["DTYPES", "export_gguf", "gguf_arch", "refusal", "refuses_block_removal", "text_architectures"]
