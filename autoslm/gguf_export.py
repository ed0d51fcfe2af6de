"""GGUF export: a checkpoint directory the torch side produced (pruned, distilled or not) -> one .gguf file.

Uses the `gguf` package's writer, tensor-name map and vocabulary readers; this module is only the glue:
  - hyper-parameters from config.json (so pruned shapes, fewer blocks, narrower MLPs, fewer heads, are written
    as they are; the head dimension is written explicitly because pruning heads breaks hidden = heads x head_dim)
  - tensor names through `gguf.TensorNameMap`, in each architecture's own convention: Llama's q/k projections
    permuted to llama.cpp's rotary layout; Gemma-3's norms, x*(1+w) in Hugging Face, stored as 1+w (llama.cpp
    multiplies by the stored weight)
  - the tokenizer: a GPT-2 style byte-level BPE (SmolLM2) with its merges, or a SentencePiece-style BPE with byte
    fallback (Gemma) as llama.cpp's "llama" vocabulary, with its special and user-defined tokens and scores
Architectures: `ARCHITECTURES` (Llama and Gemma-3); anything else is refused with a message naming it.
Deterministic: the same checkpoint gives the same bytes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoslm.errors import UserError

DTYPES = ("F32", "F16", "BF16")
# llama.cpp names a BPE pre-tokenizer; the HF tokenizer's own pre-tokenizer settings tell which one it is.
_PRE_TOKENIZERS = (
    ("smollm", lambda pre: '"individual_digits": true' in pre and "ByteLevel" in pre),
    ("gpt-2", lambda pre: "ByteLevel" in pre),
)
# llama.cpp (src/llama-model.cpp) places Gemma-3's global-attention layers itself: every 6th, with rotary base
# 10000 on the sliding ones; a checkpoint that differs would run with the wrong attention in llama.cpp
GEMMA3_SWA_PERIOD = 6
GEMMA3_LOCAL_ROPE = 10000.0


@dataclass(frozen=True)
class Architecture:
    """How one Hugging Face architecture becomes a GGUF: llama.cpp's name for it and its weight conventions."""

    gguf_name: str  # gguf.MODEL_ARCH member name
    permute_qk: bool  # Llama's rotate_half layout -> llama.cpp's interleaved pairs (NEOX-rope models: no)
    norm_shift: float  # added to every norm weight (Gemma stores w for x*(1+w); llama.cpp multiplies by 1+w)


ARCHITECTURES = {
    "LlamaForCausalLM": Architecture("LLAMA", permute_qk=True, norm_shift=0.0),
    "Gemma3ForCausalLM": Architecture("GEMMA3", permute_qk=False, norm_shift=1.0),
}
SUPPORTED = tuple(ARCHITECTURES)


def architecture(config: dict[str, Any]) -> Architecture | None:
    """The export's description of the checkpoint's architecture (config.json's `architectures`), or None."""
    return next((ARCHITECTURES[a] for a in config.get("architectures") or [] if a in ARCHITECTURES), None)


def gguf_arch(config: dict[str, Any]) -> Any:
    """`gguf.MODEL_ARCH` for a config (a dict or a transformers config); Llama when it names none we export."""
    import gguf

    if not isinstance(config, dict):
        config = {"architectures": getattr(config, "architectures", None)}
    arch = architecture(config)
    return getattr(gguf.MODEL_ARCH, arch.gguf_name if arch else "LLAMA")


def fixed_layer_pattern(config: Any) -> bool:
    """Whether llama.cpp decides this model's kinds of layers itself (Gemma-3: global attention every 6th layer,
    whatever the checkpoint says), so that removing blocks cannot be exported faithfully."""
    arch = architecture({"architectures": getattr(config, "architectures", None)})
    return arch is not None and arch.gguf_name == "GEMMA3" and len(set(getattr(config, "layer_types", None) or [])) > 1


def export_gguf(directory: Path, dest: Path, dtype: str = "F32") -> Path:
    """Write `dest` (a .gguf file) from the checkpoint in `directory`; returns `dest`."""
    import gguf
    import numpy as np
    from safetensors import safe_open

    directory, dest = Path(directory), Path(dest)
    if dtype not in DTYPES:
        raise UserError(f"GGUF type '{dtype}' is not one export writes: use one of {', '.join(DTYPES)}")
    config = json.loads((directory / "config.json").read_text())
    arch = architecture(config)
    if arch is None:
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
    model_arch = getattr(gguf.MODEL_ARCH, arch.gguf_name)
    n_layers = int(config["num_hidden_layers"])
    n_head, n_kv = (
        int(config["num_attention_heads"]),
        int(config.get("num_key_value_heads") or config["num_attention_heads"]),
    )
    head_dim = int(config.get("head_dim") or config["hidden_size"] // n_head)
    rope_base = _rope_base(directory, config, arch)
    dest.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(dest, gguf.MODEL_ARCH_NAMES[model_arch])
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
    writer.add_rope_freq_base(rope_base)
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))
    if arch.gguf_name == "GEMMA3":
        writer.add_sliding_window(_gemma3_window(directory, config, head_dim))
    writer.add_vocab_size(int(config["vocab_size"]))
    file_type = {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16}.get(
        dtype, gguf.LlamaFileType.MOSTLY_BF16
    )
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_tokenizer(writer, directory, int(config["vocab_size"]))

    names = gguf.get_tensor_name_map(model_arch, n_layers)
    with safe_open(directory / "model.safetensors", framework="np") as f:
        keys = sorted(f.keys(), key=_order)
        for key in keys:
            if key == "lm_head.weight" and config.get("tie_word_embeddings"):
                continue
            new = names.get_name(key, try_suffixes=(".weight", ".bias"))
            if new is None:
                raise UserError(
                    f"checkpoint '{directory}': tensor '{key}' has no GGUF name (not a {arch.gguf_name.lower()} "
                    "weight?)"
                )
            data = f.get_tensor(key).astype(np.float32)
            if arch.permute_qk and key.endswith("q_proj.weight"):
                data = _permute(data, n_head)
            elif arch.permute_qk and key.endswith("k_proj.weight"):
                data = _permute(data, n_kv)
            elif arch.norm_shift and key.endswith("norm.weight"):
                data = data + np.float32(arch.norm_shift)
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


def _rope_base(directory: Path, config: dict[str, Any], arch: Architecture) -> float:
    """The (global layers') rotary base; scaled rotary embeddings are not exported yet."""
    rope = config.get("rope_parameters") or {}
    if arch.gguf_name == "GEMMA3" and "full_attention" in rope:
        local = rope.get("sliding_attention") or {}
        if (
            float(local.get("rope_theta", GEMMA3_LOCAL_ROPE)) != GEMMA3_LOCAL_ROPE
            or local.get("rope_type", "default") != "default"
        ):
            raise UserError(
                f"checkpoint '{directory}': llama.cpp runs Gemma-3's sliding layers with rotary base "
                f"{GEMMA3_LOCAL_ROPE:g}, this model uses {local}: use --runtime torch for it"
            )
        rope = rope["full_attention"]
    if rope.get("rope_type", "default") != "default" or config.get("rope_scaling"):
        raise UserError(
            f"checkpoint '{directory}': rope scaling {rope or config.get('rope_scaling')} is not exported yet"
        )
    return float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))


def _gemma3_window(directory: Path, config: dict[str, Any], head_dim: int) -> int:
    """Gemma-3's sliding window, after checking the checkpoint is what llama.cpp will run: global attention on
    every 6th layer (depth pruning can move them), attention scaled by 1/sqrt(head_dim), no soft-capping."""
    n_layers = int(config["num_hidden_layers"])
    expected = ["full_attention" if (i + 1) % GEMMA3_SWA_PERIOD == 0 else "sliding_attention" for i in range(n_layers)]
    types = list(config.get("layer_types") or expected)
    if types != expected:
        globals_at = [i for i, t in enumerate(types) if t == "full_attention"]
        raise UserError(
            f"checkpoint '{directory}': its global-attention layers are {globals_at}; llama.cpp places Gemma-3's at "
            f"every {GEMMA3_SWA_PERIOD}th layer ({[i for i, t in enumerate(expected) if t == 'full_attention']}): "
            "remove whole groups of 6 blocks, or use --runtime torch for this model"
        )
    scalar = config.get("query_pre_attn_scalar")
    if scalar is not None and float(scalar) != float(head_dim):
        raise UserError(
            f"checkpoint '{directory}': query_pre_attn_scalar {scalar} is not the head dimension {head_dim}, "
            "which llama.cpp assumes for this size of Gemma-3: use --runtime torch for it"
        )
    if config.get("attn_logit_softcapping") or config.get("final_logit_softcapping"):
        raise UserError(f"checkpoint '{directory}': Gemma-3 with logit soft-capping is not exported")
    return int(config.get("sliding_window") or 4096)


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
    spec = json.loads((directory / "tokenizer.json").read_text())
    model = spec.get("model") or {}
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        _add_sentencepiece_bpe(writer, directory, spec, n_vocab)
    else:
        _add_byte_level_bpe(writer, directory, spec, n_vocab)


def _add_byte_level_bpe(writer: Any, directory: Path, spec: dict[str, Any], n_vocab: int) -> None:
    """GPT-2 style byte-level BPE (SmolLM2): llama.cpp's "gpt2" vocabulary, its merges and pre-tokenizer."""
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
    ids = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
    types = [gguf.TokenType.CONTROL if i in ids else t for i, t in enumerate(types)]
    pre = json.dumps(spec.get("pre_tokenizer"), sort_keys=True)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(next((name for name, match in _PRE_TOKENIZERS if match(pre)), "default"))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    _special_vocab(directory, len(tokens), merges=True).add_to_gguf(writer, quiet=True)


def _add_sentencepiece_bpe(writer: Any, directory: Path, spec: dict[str, Any], n_vocab: int) -> None:
    """A SentencePiece-style BPE with byte fallback (Gemma's tokenizer.json): llama.cpp's "llama" vocabulary.
    Pieces in id order; special added tokens are control tokens, other added tokens user-defined (matched as
    text), `<0xNN>` pieces bytes; a normal piece's score is minus its rank among normal pieces, so llama.cpp's
    highest-score-first merging follows the order of the vocabulary, as SentencePiece's own scores do."""
    import gguf

    vocab = {i: text for text, i in spec["model"]["vocab"].items()}
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    tokens, scores, types = [], [], []
    rank = 0
    for i in range(n_vocab):
        if i in added:
            tokens.append(added[i]["content"].encode())
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
            scores.append(-1000.0)
        elif i not in vocab:  # padded embedding rows
            tokens.append(f"[PAD{i}]".encode())
            types.append(gguf.TokenType.UNUSED)
            scores.append(-1000.0)
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", vocab[i]):
            tokens.append(vocab[i].encode())
            types.append(gguf.TokenType.BYTE)
            scores.append(0.0)
        else:
            tokens.append(vocab[i].encode())
            types.append(gguf.TokenType.NORMAL)
            scores.append(-float(rank))
            rank += 1
    normalizer = json.dumps(spec.get("normalizer"), sort_keys=True)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_add_space_prefix('"Prepend"' in normalizer)
    # bos/eos/unk/pad ids, and whether BOS goes before text (from the tokenizer's template), as the converter does
    _special_vocab(directory, len(tokens), merges=False).add_to_gguf(writer, quiet=True)


def _special_vocab(directory: Path, n_vocab: int, merges: bool) -> Any:
    """The gguf package's reader of special token ids, add-BOS/EOS flags and merges, without its console warnings
    (Gemma's pair template repeats `<bos>`, which it reports as an unknown separator)."""
    import logging

    import gguf

    log = logging.getLogger("gguf.vocab")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        return gguf.SpecialVocab(directory, load_merges=merges, n_vocab=n_vocab)
    finally:
        log.setLevel(level)


def _manifest(directory: Path) -> dict[str, Any]:
    from autoslm import checkpoint

    path = directory / checkpoint.MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}
