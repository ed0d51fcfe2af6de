"""GGUF export: a checkpoint directory the torch side produced (pruned, distilled or not) -> one .gguf file.

Uses the `gguf` package's writer, tensor-name map and vocabulary readers; this module is only the glue:
  - hyper-parameters from config.json (so pruned shapes, fewer blocks, narrower MLPs, fewer heads, are written
    as they are; the head dimension is written explicitly because pruning heads breaks hidden = heads x head_dim)
  - tensor names through `gguf.TensorNameMap`; q/k projections permuted to llama.cpp's rotary layout
  - the tokenizer (GPT-2 style BPE from tokenizer.json) with its merges and special tokens
Architectures: the Llama family (`LlamaForCausalLM`). Anything else is refused with a message naming it.
Deterministic: the same checkpoint gives the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autoslm.errors import UserError

DTYPES = ("F32", "F16", "BF16")
SUPPORTED = {"LlamaForCausalLM": "llama"}
# llama.cpp names a BPE pre-tokenizer; the HF tokenizer's own pre-tokenizer settings tell which one it is.
_PRE_TOKENIZERS = (
    ("smollm", lambda pre: '"individual_digits": true' in pre and "ByteLevel" in pre),
    ("gpt-2", lambda pre: "ByteLevel" in pre),
)


def export_gguf(directory: Path, dest: Path, dtype: str = "F32") -> Path:
    """Write `dest` (a .gguf file) from the checkpoint in `directory`; returns `dest`."""
    import gguf
    import numpy as np
    from safetensors import safe_open

    directory, dest = Path(directory), Path(dest)
    if dtype not in DTYPES:
        raise UserError(f"GGUF type '{dtype}' is not one export writes: use one of {', '.join(DTYPES)}")
    config = json.loads((directory / "config.json").read_text())
    arch_name = next((SUPPORTED[a] for a in config.get("architectures", []) if a in SUPPORTED), None)
    if arch_name is None:
        raise UserError(
            f"checkpoint '{directory}' is a {config.get('architectures')} model: GGUF export supports "
            f"{', '.join(SUPPORTED)} (use --runtime torch for this model)"
        )
    manifest = _manifest(directory)
    if manifest.get("modules"):
        coded = sorted({m["codec"] for m in manifest["modules"].values()})
        raise UserError(
            f"checkpoint '{directory}' holds modules only the torch runtime runs ({', '.join(coded)}): "
            "llama.cpp quantizes on its own (technique quant.gguf)"
        )
    arch = gguf.MODEL_ARCH.LLAMA
    n_layers = int(config["num_hidden_layers"])
    n_head, n_kv = (
        int(config["num_attention_heads"]),
        int(config.get("num_key_value_heads") or config["num_attention_heads"]),
    )
    head_dim = int(config.get("head_dim") or config["hidden_size"] // n_head)
    rope = config.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default" or config.get("rope_scaling"):
        raise UserError(
            f"checkpoint '{directory}': rope scaling {rope or config.get('rope_scaling')} is not exported yet"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(dest, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(str(config.get("_model_name_or_path") or "autoslm-export"))
    writer.add_context_length(int(config.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))
    writer.add_vocab_size(int(config["vocab_size"]))
    file_type = {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16}.get(
        dtype, gguf.LlamaFileType.MOSTLY_BF16
    )
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_tokenizer(writer, directory, int(config["vocab_size"]))

    names = gguf.get_tensor_name_map(arch, n_layers)
    with safe_open(directory / "model.safetensors", framework="np") as f:
        keys = sorted(f.keys(), key=_order)
        for key in keys:
            if key == "lm_head.weight" and config.get("tie_word_embeddings"):
                continue
            new = names.get_name(key, try_suffixes=(".weight", ".bias"))
            if new is None:
                raise UserError(f"checkpoint '{directory}': tensor '{key}' has no GGUF name (not a Llama weight?)")
            data = f.get_tensor(key).astype(np.float32)
            if key.endswith("q_proj.weight"):
                data = _permute(data, n_head)
            elif key.endswith("k_proj.weight"):
                data = _permute(data, n_kv)
            if data.ndim == 1 or dtype == "F32":  # norms stay F32, as llama.cpp's own converter writes them
                writer.add_tensor(new, data)
            elif dtype == "F16":
                writer.add_tensor(new, data.astype(np.float16))
            else:
                writer.add_tensor(new, gguf.quants.quantize(data, gguf.GGMLQuantizationType.BF16),
                                  raw_dtype=gguf.GGMLQuantizationType.BF16)  # fmt: skip
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dest


def _order(key: str) -> tuple[int, int, str]:
    """Embedding, then blocks in numeric order, then the rest (as llama.cpp's converter writes them)."""
    if key.startswith("model.embed_tokens"):
        return (0, 0, key)
    parts = key.split(".")
    if len(parts) > 2 and parts[1] == "layers" and parts[2].isdigit():
        return (1, int(parts[2]), key)
    return (2, 0, key)


def _permute(w: Any, heads: int) -> Any:
    """HF stores q/k rows as [first halves | second halves] per head (rotate_half); llama.cpp interleaves pairs."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _add_tokenizer(writer: Any, directory: Path, n_vocab: int) -> None:
    import gguf

    try:
        vocab = gguf.vocab.BpeVocab(directory)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(f"checkpoint '{directory}': its tokenizer is not a GPT-2 style BPE ({exc})") from exc
    tokens, types = [], []
    for text, _score, kind in vocab.all_tokens():
        tokens.append(text)
        types.append(kind)
    for i in range(len(tokens), n_vocab):  # padded embedding rows
        tokens.append(f"[PAD{i}]".encode())
        types.append(gguf.TokenType.UNUSED)
    special = json.loads((directory / "tokenizer.json").read_text()).get("added_tokens", [])
    ids = {t["id"] for t in special if t.get("special")}
    types = [gguf.TokenType.CONTROL if i in ids else t for i, t in enumerate(types)]
    pre = json.dumps(json.loads((directory / "tokenizer.json").read_text()).get("pre_tokenizer"), sort_keys=True)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(next((name for name, match in _PRE_TOKENIZERS if match(pre)), "default"))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(directory, load_merges=True, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)


def _manifest(directory: Path) -> dict[str, Any]:
    from autoslm import checkpoint

    path = directory / checkpoint.MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}
