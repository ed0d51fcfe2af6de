"""Checkpoint directories: safetensors weights + config + tokenizer, with a manifest of sha256 per file.

Loading never unpickles: weights come from safetensors only, and a file that does not match the manifest
(truncated or tampered) is refused before anything is read.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

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


def weights_file(directory: Path) -> Path:
    """The file that holds a checkpoint's weights: model.gguf (llama.cpp runtime) or model.safetensors."""
    gguf = Path(directory) / "model.gguf"
    return gguf if gguf.is_file() else Path(directory) / "model.safetensors"


def weights_size_mb(directory: Path) -> float:
    """Size on disk of the weight files (what `size_mb` reports): model.gguf, else every safetensors shard (a GGUF
    checkpoint may hold other GGUF files beside its model: the importance matrix, the F32 export)."""
    gguf = Path(directory) / "model.gguf"
    if gguf.is_file():
        return gguf.stat().st_size / 2**20
    return sum(p.stat().st_size for p in Path(directory).iterdir() if p.suffix == ".safetensors") / 2**20


class GgufTensor(NamedTuple):
    name: str
    shape: tuple[int, ...]  # GGUF order: shape[0] is the row length
    kind: str  # ggml type name: F32, Q8_0, Q4_K, ...
    values: int
    nbytes: int


_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def gguf_tensors(path: Path) -> list[GgufTensor]:
    """The tensor directory of a GGUF file, read from its header alone (the gguf package's reader also decodes every
    metadata value: 2.5 s for SmolLM2's 100k vocabulary strings, this skips them in ~0.1 s)."""
    import mmap
    import struct

    import gguf

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        n_tensors, n_kv = struct.unpack_from("<QQ", buf, 8)
        pos = 24

        def string(pos: int) -> tuple[str, int]:
            (n,) = struct.unpack_from("<Q", buf, pos)
            return bytes(buf[pos + 8 : pos + 8 + n]).decode("utf-8", "replace"), pos + 8 + n

        def skip(kind: int, pos: int) -> int:
            if kind in _GGUF_SCALARS:
                return pos + struct.calcsize("<" + _GGUF_SCALARS[kind])
            if kind == 8:
                (n,) = struct.unpack_from("<Q", buf, pos)
                return pos + 8 + n
            if kind == 9:
                elem, count = struct.unpack_from("<IQ", buf, pos)
                pos += 12
                if elem in _GGUF_SCALARS:
                    return pos + count * struct.calcsize("<" + _GGUF_SCALARS[elem])
                for _ in range(count):
                    pos = skip(elem, pos)
                return pos
            raise ValueError(f"{path}: unknown GGUF value type {kind}")

        for _ in range(n_kv):
            _, pos = string(pos)
            (kind,) = struct.unpack_from("<I", buf, pos)
            pos = skip(kind, pos + 4)
        out = []
        for _ in range(n_tensors):
            name, pos = string(pos)
            (n_dims,) = struct.unpack_from("<I", buf, pos)
            shape = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
            (kind,) = struct.unpack_from("<I", buf, pos + 4 + 8 * n_dims)
            pos += 4 + 8 * n_dims + 4 + 8
            qtype = gguf.GGMLQuantizationType(kind)
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            values = 1
            for d in shape:
                values *= int(d)
            out.append(GgufTensor(name, tuple(int(d) for d in shape), qtype.name, values, values // block * size))
        return out


def weights_bpw(directory: Path) -> float | None:
    """Bits per weight: the weight tensors' bytes x 8 over the number of weights they hold. A GGUF says both itself
    (llama.cpp's own figure); a safetensors checkpoint holds its bytes and its manifest the model's logical weight
    count (quantized layers count every weight, however packed). None when neither is known."""
    import struct

    directory = Path(directory)
    gguf_file = directory / "model.gguf"
    if gguf_file.is_file():
        tensors = gguf_tensors(gguf_file)
        values = sum(t.values for t in tensors)
        return 8 * sum(t.nbytes for t in tensors) / values if values else None
    st = directory / "model.safetensors"
    manifest = directory / MANIFEST
    if not st.is_file() or not manifest.is_file():
        return None
    parameters = json.loads(manifest.read_text()).get("parameters")
    if not isinstance(parameters, int) or parameters <= 0:
        return None
    with open(st, "rb") as f:
        header = struct.unpack("<Q", f.read(8))[0]
    return 8 * (st.stat().st_size - 8 - header) / parameters


def save_dir(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, directory: Path, **meta: Any) -> Path:
    """Save `model` (safetensors) and tokenizer, then write the manifest of file checksums.

    A model made only of standard modules is saved with `save_pretrained` (it reloads with plain transformers).
    Modules a technique created (quantized, factorised) are stored through their codec: tensors in
    `model.safetensors` under the module's name, codec name and metadata in the manifest's `modules`.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    modules = _save_weights(model, directory)
    mark_config(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    names = [p.name for p in directory.iterdir() if p.is_file() and p.name != MANIFEST]
    from autoslm.models import count_parameters

    meta.setdefault("parameters", count_parameters(model))  # bits per weight are measured against it
    return write_manifest(directory, names, **({"modules": modules} if modules else {}), **meta)


ALLOW_UNVERIFIED = "AUTOSLM_ALLOW_UNVERIFIED"
MARKER = "autoslm_checkpoint"  # a key autoslm adds to the config.json of every checkpoint it writes


def written_by_autoslm(directory: Path) -> bool:
    """Whether the folder's config.json carries autoslm's marker (so a missing manifest means a damaged folder)."""
    try:
        config = json.loads((Path(directory) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and MARKER in config


def mark_config(directory: Path) -> None:
    """Add autoslm's marker to the folder's config.json (transformers keeps unknown keys as config attributes)."""
    path = Path(directory) / "config.json"
    if path.is_file():
        config = json.loads(path.read_text())
        config[MARKER] = FORMAT_VERSION
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_manifest(directory: Path, names: list[str], **meta: Any) -> Path:
    """Write the checkpoint's manifest: the sha256 of each named file, plus `meta`. Returns the directory."""
    directory = Path(directory)
    files = {n: sha256_file(directory / n) for n in sorted(names)}
    manifest = {"format_version": FORMAT_VERSION, "files": files, **meta}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return directory


def add_file(directory: Path, name: str, text: str) -> Path:
    """Write a text file into a checkpoint and record its sha256 in the manifest."""
    directory = Path(directory)
    (directory / name).write_text(text)
    path = directory / MANIFEST
    manifest = json.loads(path.read_text()) if path.is_file() else {"format_version": FORMAT_VERSION, "files": {}}
    manifest["files"][name] = sha256_file(directory / name)
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return directory / name


_KNOWN_MODULE_ROOTS = ("torch.", "transformers.")


def _refuse_unknown_modules(model: PreTrainedModel, coded: dict[str, Any]) -> None:
    """A module type from neither torch nor transformers needs a codec, or its weights would not load back."""
    leaves = tuple(f"{n}." for n, c in coded.items() if not c.container)
    for name, mod in model.named_modules():
        if not name or name in coded or name.startswith(leaves):
            continue
        if not type(mod).__module__.startswith(_KNOWN_MODULE_ROOTS):
            raise ValueError(
                f"cannot save module '{name}': type {type(mod).__module__}.{type(mod).__name__} has no codec; "
                "the plugin that creates it must register an autoslm.Codec for it (docs/plugins.md, 'Codecs')"
            )


def _save_weights(model: PreTrainedModel, directory: Path) -> dict[str, Any]:
    from safetensors.torch import save_file

    from autoslm.plugins import get_registry

    registry = get_registry()
    coded: dict[str, Any] = {}
    for name, mod in model.named_modules():  # parents come first; a leaf-coded module's children belong to it
        inside_leaf = any(name.startswith(f"{c}.") for c, codec in coded.items() if not codec.container)
        if name and not inside_leaf and (codec := registry.codec_for(mod)):
            coded[name] = codec
    _refuse_unknown_modules(model, coded)
    if not coded:
        model.save_pretrained(directory, safe_serialization=True)
        return {}
    model.config.save_pretrained(directory)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(directory)
    tensors: dict[str, Any] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    aliases: dict[str, str] = {}
    modules: dict[str, Any] = {}
    leaf_prefixes = tuple(f"{name}." for name, codec in coded.items() if not codec.container)
    for key, tensor in model.state_dict().items():
        if key.startswith(leaf_prefixes) or not hasattr(tensor, "untyped_storage"):
            continue
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        tensors[key] = tensor.detach().contiguous()
    for name, codec in coded.items():
        enc, meta = codec.encode(model.get_submodule(name))
        for key, tensor in enc.items():
            # a tensor two coded modules share (a coded embedding tied to the lm_head) is stored once
            ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
            if ident in seen and tensor.is_contiguous():
                aliases[f"{name}.{key}"] = seen[ident]
                continue
            seen[ident] = f"{name}.{key}"
            tensors[f"{name}.{key}"] = tensor.detach().contiguous()
        entry = registry.codec_entry(codec)
        modules[name] = {"codec": codec.name, "meta": meta, "tensors": sorted(enc), "container": codec.container,
                         "dist": entry.dist, "version": entry.version}  # fmt: skip
    # one metadata key only: safetensors writes a multi-key metadata map in random order (not byte-stable)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return {"aliases": aliases, "coded": modules}


def verify_dir(directory: Path) -> dict[str, Any] | None:
    """Check every file listed in the manifest; return the manifest (None for a plain Hugging Face directory)."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        if written_by_autoslm(directory) and not os.environ.get(ALLOW_UNVERIFIED):
            raise ChecksumError(
                f"checkpoint '{directory}' was written by autoslm but its {MANIFEST} is missing, so its files cannot "
                f"be verified (deleted after a change?): restore it or re-export the checkpoint; to load it anyway "
                f"pass --allow-unverified (or set {ALLOW_UNVERIFIED}=1)"
            )
        return None
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as exc:
        what = "nests too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ChecksumError(f"checkpoint '{directory}': {MANIFEST} is unreadable ({what}); re-export it") from exc
    _check_listing(directory, files)
    for name, digest in files.items():
        f = Path(directory) / name
        if not f.is_file():
            raise ChecksumError(f"checkpoint '{directory}': {name} is missing; re-export the checkpoint")
        if sha256_file(f) != digest:
            raise ChecksumError(
                f"checkpoint '{directory}': {name} does not match its sha256 (truncated or modified); re-export it"
            )
    return manifest


MAX_MANIFEST_FILES = 256


def _check_listing(directory: Path, files: Any) -> None:
    """A manifest lists plain file names of its own folder, each once, with sha256 digests: never a path that
    reaches elsewhere (`/etc/passwd`, `../x`, `././model.safetensors`), whatever exists there."""
    if not isinstance(files, dict) or len(files) > MAX_MANIFEST_FILES:
        raise ChecksumError(
            f"checkpoint '{directory}': {MANIFEST} 'files' must map at most {MAX_MANIFEST_FILES} file names to sha256"
        )
    for name, digest in files.items():
        plain = isinstance(name, str) and name == Path(name).name and name not in ("", ".", "..") and "\\" not in name
        if not plain or len(name) > 255:
            raise ChecksumError(
                f"checkpoint '{directory}': {MANIFEST} lists {str(name)[:80]!r}, not a plain file name of the "
                "checkpoint; re-export it"
            )
        if not (isinstance(digest, str) and len(digest) == 64):
            raise ChecksumError(f"checkpoint '{directory}': {MANIFEST} has no sha256 for '{name}'; re-export it")


def require_safetensors(directory: Path) -> None:
    """A UserError unless the directory holds safetensors weights (autoslm never unpickles)."""
    if not any(Path(directory).glob("*.safetensors")):
        raise UserError(
            f"model directory '{directory}' has no .safetensors weights: autoslm never loads pickled weights; "
            "convert them with transformers' save_pretrained(safe_serialization=True)"
        )


def load_model(directory: Path, *, dtype: str | torch.dtype = "auto", verify: bool = True) -> PreTrainedModel:
    """Load the model of a checkpoint or Hugging Face directory (safetensors only, never pickle)."""
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    if verify:
        verify_dir(directory)
    require_safetensors(directory)
    manifest = _read_manifest(directory)
    if manifest and manifest.get("modules"):
        try:
            return _load_coded(directory, manifest["modules"]).eval()
        except UserError:
            raise
        except (KeyError, IndexError, ValueError, TypeError, AttributeError, RuntimeError) as exc:
            raise UserError(
                f"checkpoint '{directory}': its manifest's coded modules do not match model.safetensors "
                f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); re-export it"
            ) from exc
    model, info = AutoModelForCausalLM.from_pretrained(
        directory, dtype=dtype, use_safetensors=True, output_loading_info=True
    )
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    missing = sorted(set(info.get("missing_keys") or ()) - tied)
    mismatched = list(info.get("mismatched_keys") or ())
    if missing or mismatched:
        what = f"lacks weights for {missing[:3]}" if missing else f"has weights of the wrong shape: {mismatched[:2]}"
        raise UserError(f"model directory '{directory}' {what} (truncated or from another model?); restore it")
    return model.eval()


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    path = Path(directory) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def _load_coded(directory: Path, modules: dict[str, Any]) -> PreTrainedModel:
    """Rebuild a model whose modules include codec-stored ones: skeleton without weights, then assign tensors."""
    import torch
    from accelerate import init_empty_weights
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from autoslm.plugins import get_registry

    config = AutoConfig.from_pretrained(directory)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config)
    tensors = load_file(str(Path(directory) / "model.safetensors"))
    for alias, original in modules.get("aliases", {}).items():  # shared tensors: one object again
        tensors[alias] = tensors[original]
    registry = get_registry()
    leaves = {}
    # containers first, parents before children, built without weights; their children load like any module
    for name, entry in sorted(modules["coded"].items(), key=lambda kv: kv[0].count(".")):
        codec = registry.codec(entry["codec"], entry.get("dist"), entry.get("version"))
        own = {key: tensors.pop(f"{name}.{key}") for key in entry["tensors"]}
        if entry.get("container"):
            with init_empty_weights(include_buffers=False):
                model.set_submodule(name, codec.decode(own, entry["meta"]))
        else:
            leaves[name] = codec.decode(own, entry["meta"])
    coded_keys = tuple(f"{n}." for n in modules["coded"])
    for alias in modules.get("aliases", {}):  # a coded module's shared tensor was consumed by its codec
        if alias.startswith(coded_keys):
            tensors.pop(alias, None)
    _missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    for name, module in leaves.items():
        model.set_submodule(name, module)
    if unexpected:
        raise UserError(f"checkpoint '{directory}' has tensors the model does not use: {unexpected[:3]}; re-export it")
    embeddings = {
        n for n, m in model.named_modules() if m is model.get_input_embeddings() or m is model.get_output_embeddings()
    }
    if getattr(config, "tie_word_embeddings", False) and not embeddings & set(modules["coded"]):
        model.tie_weights()  # plain tied embeddings; coded ones were rebuilt sharing what their checkpoint shared
    still_empty = [n for n, p in model.named_parameters() if p.device == torch.device("meta")]
    if still_empty:
        raise UserError(f"checkpoint '{directory}' lacks weights for {still_empty[:3]}; re-export it")
    return model


def load_tokenizer(directory: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(Path(directory))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_dir(
    directory: Path, *, dtype: str | torch.dtype = "auto", verify: bool = True
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load model + tokenizer from a checkpoint or Hugging Face directory (safetensors only, never pickle)."""
    return load_model(directory, dtype=dtype, verify=verify), load_tokenizer(directory)
