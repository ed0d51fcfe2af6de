"""What autoslm must know about an architecture beyond llama.cpp's converter: whether llama.cpp can represent a
*compressed* checkpoint of it, and the few GGUF keys a compressed shape needs that the converter does not write.

llama.cpp's converter (`conversion/`, one class per architecture, registered by Hugging Face names) knows how every
architecture it supports becomes a GGUF: tensor names, q/k permutations, norm conventions, the tokenizer. It reads
the hyper-parameters from config.json, so pruned MLP widths, fewer heads (with `head_dim` written) and fewer blocks
come through as they are. What it cannot know is that a checkpoint was *changed*: an architecture whose layer kinds
llama.cpp places by a fixed rule (Gemma-2/3 sliding-window layers, SmolLM3's layers without rotary) runs wrongly
after blocks are removed, unless the GGUF says where each kind now is. Each such architecture is one `Glue`
subclass here, registered by its Hugging Face names, as the converter registers its classes.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import Any, ClassVar

from autoslm.llamacpp.source import converter_root, text_architectures

GLUES: dict[str, type[Glue]] = {}


def register(*hf_names: str) -> Any:
    def wrap(cls: type[Glue]) -> type[Glue]:
        for name in hf_names:
            GLUES[name] = cls
        return cls

    return wrap


class Glue:
    """An architecture the converter knows, with nothing more to add (Llama, Mistral, Qwen2/3, Phi-3, ...)."""

    #: the keys `extra_keys` fills, for the docs' table
    writes: ClassVar[str] = ""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def refuses_block_removal(self) -> str | None:
        """Why a checkpoint of this architecture with whole blocks removed cannot run in llama.cpp (None: it can)."""
        return None

    def check(self) -> str | None:
        """Why this (possibly compressed) checkpoint cannot be represented in llama.cpp (None: it can)."""
        return None

    def extra_keys(self) -> dict[str, Any]:
        """GGUF writer calls (method name -> value) made after the converter's own: what a compressed shape needs."""
        return {}

    def vocab_method(self, directory: Path) -> str | None:
        """The converter's own vocabulary reader to use instead of the class's (None: the class's own)."""
        return None


class VocabFromTokenizerJson(Glue):
    """The converter's classes for Gemma-2 and Phi-3 read only a SentencePiece `tokenizer.model`. A checkpoint that
    has only tokenizer.json (what transformers saves again, or one converted from a GGUF) is read as the converter
    reads Gemma-3's in that case: a BPE vocabulary whose pre-tokenizer is recognised by the hash of its behaviour
    (never guessed)."""

    def vocab_method(self, directory: Path) -> str | None:
        return None if (directory / "tokenizer.model").is_file() else "_set_vocab_gpt2"


register("Phi3ForCausalLM")(VocabFromTokenizerJson)


@register("Gemma2ForCausalLM", "Gemma3ForCausalLM")
class SlidingWindowLayers(VocabFromTokenizerJson):
    """Gemma-2 and Gemma-3 alternate sliding-window and global layers. llama.cpp places them by a fixed period (every
    2nd / 6th layer is global) unless the GGUF lists them layer by layer, so the list is written from the
    checkpoint's `layer_types`: a model with blocks removed runs with each remaining block's own attention. The
    sliding layers' rotary base is written too (llama.cpp would otherwise assume its own default)."""

    writes = "attention.sliding_window_pattern (per layer), rope.freq_base_swa"

    def check(self) -> str | None:
        head_dim = self.config.get("head_dim")
        scalar = self.config.get("query_pre_attn_scalar")
        if scalar is not None and head_dim is not None and float(scalar) != float(head_dim):
            return (f"query_pre_attn_scalar {scalar} is not the head dimension {head_dim}, which llama.cpp assumes "
                    "for this size of Gemma")  # fmt: skip
        rope = self.config.get("rope_parameters") or {}
        local = rope.get("sliding_attention") if isinstance(rope, dict) else None
        if isinstance(local, dict) and local.get("rope_type", "default") != "default":
            return f"the sliding layers' rotary scaling {local.get('rope_type')} is not written by the converter"
        return None

    def extra_keys(self) -> dict[str, Any]:
        keys: dict[str, Any] = {}
        types = self.config.get("layer_types")
        if types:
            keys["add_sliding_window_pattern"] = [t == "sliding_attention" for t in types]
        rope = self.config.get("rope_parameters") or {}
        local = rope.get("sliding_attention") if isinstance(rope, dict) else None
        if isinstance(local, dict) and "rope_theta" in local:
            keys["add_rope_freq_base_swa"] = float(local["rope_theta"])
        elif self.config.get("rope_local_base_freq") is not None:
            keys["add_rope_freq_base_swa"] = float(self.config["rope_local_base_freq"])
        return keys


@register("SmolLM3ForCausalLM")
class NoRopeLayers(Glue):
    """SmolLM3 leaves out the rotary embedding on some layers; llama.cpp places those itself (every 4th layer),
    whatever the checkpoint says, so removing blocks would move rotary onto the wrong layers."""

    step = 4

    def _layers(self) -> list[int]:
        n = int(self.config.get("num_hidden_layers") or 0)
        flags = self.config.get("no_rope_layers")
        return [int(f) for f in flags] if isinstance(flags, list) else [int((i + 1) % self.step != 0) for i in range(n)]

    def refuses_block_removal(self) -> str | None:
        return (f"llama.cpp runs SmolLM3 without rotary on every {self.step}th layer, so a model with blocks removed "
                "would apply rotary to the wrong layers")  # fmt: skip

    def check(self) -> str | None:
        expected = [int((i + 1) % self.step != 0) for i in range(int(self.config.get("num_hidden_layers") or 0))]
        if self._layers() != expected:
            return (f"its layers without rotary are not every {self.step}th layer, where llama.cpp places them "
                    "(blocks removed?)")  # fmt: skip
        return None


@register("Olmo2ForCausalLM")
class UntiedHead(Glue):
    """llama.cpp's OLMo-2 needs its own output matrix: it does not fall back to the token embedding."""

    def check(self) -> str | None:
        if self.config.get("tie_word_embeddings"):
            return "llama.cpp runs OLMo-2 only with an output matrix of its own (tie_word_embeddings is true)"
        return None


def glue(config: dict[str, Any]) -> Glue:
    """The glue of the checkpoint's architecture (config.json's `architectures`)."""
    names = config.get("architectures") or []
    return next((GLUES[a] for a in names if a in GLUES), Glue)(config)


def hf_architecture(config: dict[str, Any]) -> str | None:
    """The first of config.json's `architectures` that llama.cpp's converter knows as a text model, or None."""
    known = text_architectures()
    names = config.get("architectures")
    return next((a for a in names if isinstance(a, str) and a in known), None) if isinstance(names, list) else None


@functools.cache
def gguf_arch_name(hf_arch: str) -> str:
    """llama.cpp's architecture (a `gguf.MODEL_ARCH` member name, e.g. QWEN2) for a Hugging Face architecture, read
    from the converter's class for it without importing the converter: the class registered under that name sets
    `model_arch = gguf.MODEL_ARCH.X`, or inherits it from a base class."""
    root = converter_root()
    module = text_architectures()[hf_arch]
    classes: dict[str, tuple[list[str], str | None, list[str]]] = {}
    for path in sorted((root / "conversion").glob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef):
                classes.setdefault(node.name, (_bases(node), _model_arch(node), _registered(node)))
    owner = next((n for n, (_b, _a, names) in classes.items() if hf_arch in names), None)
    seen: set[str] = set()
    while owner and owner not in seen:
        seen.add(owner)
        bases, arch, _names = classes.get(owner, ([], None, []))
        if arch:
            return arch
        owner = next((b for b in bases if b in classes), None)
    raise LookupError(f"llama.cpp's converter ({module}.py) sets no model_arch for {hf_arch}")


def _bases(node: ast.ClassDef) -> list[str]:
    return [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases]


def _model_arch(node: ast.ClassDef) -> str | None:
    for stmt in node.body:
        targets = (
            stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
        )
        value = getattr(stmt, "value", None)
        if any(isinstance(t, ast.Name) and t.id == "model_arch" for t in targets) and isinstance(value, ast.Attribute):
            return value.attr
    return None


def _registered(node: ast.ClassDef) -> list[str]:
    names = []
    for deco in node.decorator_list:
        if isinstance(deco, ast.Call) and getattr(deco.func, "attr", "") == "register":
            names += [a.value for a in deco.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    return names


def converter_module_path(hf_arch: str) -> Path:
    """The converter's file that holds the class for `hf_arch` (for messages and the docs' table)."""
    return converter_root() / "conversion" / f"{text_architectures()[hf_arch]}.py"
