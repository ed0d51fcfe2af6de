"""The `llama.cpp` runtime: candidates exported to GGUF, quantized by llama.cpp, and run by llama.cpp
(llama-cpp-python) -- what people who run small models on a CPU, laptop or phone deploy with.

A candidate's torch-side steps (pruning, depth, distillation) run in torch; `save` then writes the result as an F32
GGUF (llama.cpp's own converter, `autoslm/llamacpp/`) and, when the policy has a `quant.gguf` step, quantizes it with
`llama_model_quantize` (whole-model type, output / token-embedding types, per-tensor overrides). The checkpoint
directory holds `model.gguf`, the tokenizer files (so evaluation tokenizes exactly as the torch runtime does) and
the manifest. `measure` times decode and prefill in llama.cpp; `evaluate` scores perplexity and the two tasks on
llama.cpp's logits over the same held-out windows as the torch runtime.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, ValidationError

from autoslm import progress
from autoslm.errors import UserError
from autoslm.llamacpp import stock

# llama.cpp's number formats, derived from gguf-py's tables
from autoslm.llamacpp.types import FTYPES, K_FALLBACK, TENSOR_TYPES, TYPE_BITS  # noqa: F401 (re-exported)
from autoslm.runtimes import Runtime
from autoslm.targets import THREADS, MeasureSettings
from autoslm.targets.measure import alternate, measure_loaded, prompts

GGUF = "model.gguf"
# tokens per llama_decode call and per compute pass when measuring: llama.cpp's own defaults (llama-server,
# llama-cli: -b 2048 -ub 512), so that a prompt deeper than 512 tokens costs the compute buffers a deployment has
BATCH, UBATCH = 2048, 512
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


class LlamaCppRuntime(Runtime):
    name = "llama.cpp"
    default_space = "llamacpp"
    takes_files = True  # an unchanged model is exported from its files by the converter, never loaded in torch
    description = "GGUF run by llama.cpp (llama-cpp-python); quantized by llama.cpp (technique quant.gguf)"

    def version(self) -> dict[str, str]:
        import llama_cpp

        return {"llama-cpp-python": llama_cpp.__version__}

    def refuses(self, technique: type) -> str | None:
        from autoslm.technique import Stage

        if getattr(technique, "runtime", None) == self.name:
            return None
        if getattr(technique, "runtime", None) is not None:
            return f"it belongs to the {technique.runtime} runtime"
        if technique.stage not in (Stage.PRUNE, Stage.DISTILL):
            return "it makes layers or number formats only torch runs; llama.cpp quantizes on its own (quant.gguf)"
        return None

    def refuses_model(self, model: Any) -> str | None:
        """From config.json alone (a dict, a config or a loaded model): llama.cpp's converter must know the
        architecture (autoslm/llamacpp)."""
        from autoslm.llamacpp import refusal

        return refusal(model)

    def check_files(self, directory: Path) -> None:
        """The converter's own verdict on the directory: its architecture and its tokenizer (autoslm/llamacpp)."""
        from autoslm.llamacpp import check_files

        check_files(directory)

    def refuses_on(self, technique: type, model: Any) -> str | None:
        from autoslm.llamacpp import refuses_block_removal

        return refuses_block_removal(model) if getattr(technique, "removes_blocks", False) else None

    def save(self, model: Any, tokenizer: Any, directory: Path, planned: list[Any], **meta: Any) -> Path:
        """The model as an F32 GGUF, then quantized as the policy's quant.gguf step says (if any). `model`: a torch
        model, or `ModelFiles` (the converter reads its weight files: nothing is loaded into torch)."""
        from autoslm import checkpoint
        from autoslm.llamacpp import export_gguf
        from autoslm.models import ModelFiles

        directory = Path(directory)
        scratch = directory.with_name(f".{directory.name}.torch")
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            ours = [p for p in planned if getattr(p.entry.cls, "runtime", None) == self.name]
            context = CacheSettings.from_steps(ours)  # how llama.cpp opens the model (kv.cache_type)
            steps = [p for p in ours if not callable(getattr(p.config, "context_settings", None))]
            if steps:
                with progress.phase("exporting the F32 GGUF"):
                    source = f32_export(model, tokenizer)
                config = quantize_settings(steps[-1].config)
                imatrix = None
                if config.get("imatrix"):
                    with progress.phase("importance matrix"):
                        imatrix = cached_importance_matrix(
                            source / "f32.gguf", tokenizer, config["imatrix_samples"], config["imatrix_seq_len"]
                        )
                with progress.phase("quantizing in llama.cpp"):
                    quantize(source / "f32.gguf", directory / GGUF, config, imatrix)
                # what stock llama-quantize needs to make the same GGUF from the F32 export (autoslm/llamacpp/stock.py)
                meta[stock.MANIFEST_KEY] = stock.write(directory, config, imatrix, _override_pattern, GGUF)
            elif isinstance(model, ModelFiles):  # the F32 GGUF the trials quantize: one file, one set of pages
                with progress.phase("exporting the GGUF"):
                    source = f32_export(model, tokenizer)
                    _link_or_copy(source / "f32.gguf", directory / GGUF)
            else:
                source = scratch
                with progress.phase("exporting the GGUF"):
                    checkpoint.save_dir(model, tokenizer, scratch)
                    export_gguf(scratch, directory / GGUF)
            for name in (*TOKENIZER_FILES, "config.json"):
                if (source / name).is_file():
                    shutil.copy2(source / name, directory / name)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        names = [GGUF, "config.json", *(n for n in TOKENIZER_FILES if (directory / n).is_file())]
        if context != CacheSettings():
            meta[CONTEXT_KEY] = context.model_dump()
        return checkpoint.write_manifest(directory, names, runtime=self.name, **meta)

    def write_f32(self, model: Any, tokenizer: Any, directory: Path) -> Path:
        """The F32 GGUF a quantized checkpoint was made from, as `model-f32.gguf` beside it (not in its manifest):
        what the recipe's stock `llama-quantize` command reads. `model`: as given to `save`."""
        path = Path(directory) / stock.F32_FILE
        path.unlink(missing_ok=True)
        _link_or_copy(f32_export(model, tokenizer) / "f32.gguf", path)
        return path

    def prepare(self, spec: str) -> Path:
        """A checkpoint with model.gguf as it is; a .gguf file as it is (beside the tokenizer of its cached
        conversion); any other model exported once to an F32 GGUF (cached by fingerprint)."""
        from autoslm.cache import cache_dir
        from autoslm.models import load_files, parse_spec, peek_config, resolve

        ms = parse_spec(spec)
        if ms.kind == "dir" and (Path(spec) / GGUF).is_file():
            return Path(spec)
        config = peek_config(ms)
        refused = self.refuses_model(config) if config is not None else None
        if refused:  # decided from config.json, before the model is loaded
            raise UserError(f"--runtime {self.name}: {refused}")
        if ms.kind != "hub":
            self.check_files(resolve(ms))
        torch_dir = resolve(ms)
        if ms.kind == "gguf":
            out = cache_dir("gguf") / f"file-{_digest(str(ms.path))}"
            out.mkdir(parents=True, exist_ok=True)
            for name in (*TOKENIZER_FILES, "config.json"):
                if (torch_dir / name).is_file():
                    shutil.copy2(torch_dir / name, out / name)
            if not (out / GGUF).exists():
                (out / GGUF).symlink_to(Path(ms.path).resolve())
            return out
        files = load_files(spec)  # exported from its files by the converter: nothing loaded into torch
        out = cache_dir("gguf") / f"f32-{files.fingerprint[:16]}"
        if not (out / GGUF).is_file():
            self.save(files, files.tokenizer, out, [], base_fingerprint=files.fingerprint)
        return out

    def evaluate(
        self, model: Any, tokenizer: Any, directory: Path, fidelity: Any, reference: Any = None, keep_topk: int = 0,
        prior: Any = None,
    ) -> Any:  # fmt: skip
        from autoslm.allocator import unmap_large_blocks
        from autoslm.evaluate import evaluate

        unmap_large_blocks()  # the logits of every task row, freed, would stay resident otherwise
        n_ctx = 2 * max(fidelity.seq_len, 512)  # two perplexity windows per call
        with open_gguf(Path(directory) / GGUF, n_ctx=32) as llm:
            lm = LlamaCppLM(llm, n_ctx=n_ctx, cache=CacheSettings.of(Path(directory)))
            try:
                return evaluate(lm, tokenizer, fidelity, reference=reference, keep_topk=keep_topk, prior=prior)
            finally:
                lm.close()

    def measure(self, directory: Path, settings: MeasureSettings) -> dict[str, Any]:
        from autoslm import checkpoint

        directory = Path(directory)
        checkpoint.verify_dir(directory)
        decode_prompt, prefill_prompt = prompts(directory, settings)
        _warm()
        return measure_loaded(
            directory,
            settings,
            lambda: _measure_gguf(directory / GGUF, settings),
            lambda llm: _runner(llm, decode_prompt, prefill_prompt, settings),
            target={"runtime": self.name},
        )

    def measure_pair(self, candidate: Path, baseline: Path, settings: MeasureSettings, rounds: int) -> dict[str, Any]:
        """Both GGUFs loaded in this process, timed alternately (order flipping each round)."""
        from autoslm import checkpoint

        paths = {"baseline": Path(baseline), "candidate": Path(candidate)}
        for directory in paths.values():
            checkpoint.verify_dir(directory)
        decode_prompt, prefill_prompt = prompts(paths["baseline"], settings)
        with contextlib.ExitStack() as stack:
            llms = {name: stack.enter_context(_measure_gguf(d / GGUF, settings)) for name, d in paths.items()}
            runs = {name: _runner(llm, decode_prompt, prefill_prompt, settings) for name, llm in llms.items()}
            return alternate(runs["baseline"], runs["candidate"], settings, rounds)


CONTEXT_KEY = "llama_context"  # the manifest's record of how llama.cpp opens the model (CacheSettings)
CacheType = Literal["F16", "Q8_0", "Q4_0"]
CACHE_TYPES: tuple[str, ...] = get_args(CacheType)


class CacheSettings(BaseModel):
    """How llama.cpp opens a checkpoint's model beyond its weights: the KV cache's number formats and flash
    attention (technique kv.cache_type). The runtime records them in the manifest; an agent reads them from a
    client's upload, so they are checked like any other input."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type_k: CacheType = "F16"
    type_v: CacheType = "F16"
    flash_attn: bool = False

    @classmethod
    def from_steps(cls, planned: list[Any]) -> CacheSettings:
        """The settings the policy's steps ask for (each step's `context_settings()`, the later ones winning)."""
        merged: dict[str, Any] = {}
        for p in planned:
            make = getattr(p.config, "context_settings", None)
            if callable(make):
                merged.update(make())
        return cls(**merged)

    @classmethod
    def of(cls, directory: Path) -> CacheSettings:
        """The settings a checkpoint's manifest records (none: llama.cpp's defaults); a UserError where they are
        not ones this runtime knows."""
        from autoslm import checkpoint

        path = Path(directory) / checkpoint.MANIFEST
        try:
            recorded = json.loads(path.read_text()).get(CONTEXT_KEY) if path.is_file() else None
        except (OSError, ValueError, AttributeError, RecursionError):
            return cls()  # an unreadable manifest is verify_dir's to report
        if recorded is None:
            return cls()
        try:
            return cls.model_validate(recorded)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            raise UserError(
                f"checkpoint '{directory}': {checkpoint.MANIFEST} '{CONTEXT_KEY}' is not understood "
                f"({'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']}); the KV cache types are "
                f"{', '.join(CACHE_TYPES)}: re-export the checkpoint"
            ) from exc

    def llama_kwargs(self) -> dict[str, Any]:
        """llama-cpp-python's `Llama(...)` arguments (ggml's type numbers from gguf-py's table)."""
        from gguf import GGMLQuantizationType

        return {
            "type_k": GGMLQuantizationType[self.type_k].value,
            "type_v": GGMLQuantizationType[self.type_v].value,
            "flash_attn": self.flash_attn,
        }

    def flags(self) -> str:
        """The same settings as llama.cpp's command-line flags ('' for the defaults)."""
        if self == CacheSettings():
            return ""
        return f" -ctk {self.type_k.lower()} -ctv {self.type_v.lower()} -fa {'on' if self.flash_attn else 'off'}"


def quantize_settings(config: Any) -> dict[str, Any]:
    """What `quantize` takes from a llama.cpp technique's Config: its `quantize_settings()` when it has one (a
    technique whose parameters are not llama.cpp's own, e.g. quant.mixed), else its fields (quant.gguf)."""
    settings = getattr(config, "quantize_settings", None)
    return settings() if callable(settings) else config.model_dump()


@contextlib.contextmanager
def open_gguf(
    path: Path, n_ctx: int, threads: int = THREADS, logits_all: bool = False, cache: CacheSettings | None = None
) -> Iterator[Any]:
    """A llama.cpp model + context (quiet), closed on exit; `cache`: the KV cache's settings (default: llama.cpp's
    F16 cache, no flash attention)."""
    from llama_cpp import Llama

    path = Path(path)
    if not path.is_file():
        raise UserError(f"'{path.parent}' holds no {GGUF}: give a checkpoint made with --runtime llama.cpp")
    with _stderr_to(Path(os.devnull)):  # context creation notes (Gemma-3's sliding-window cache) bypass the logger
        llm = Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=min(n_ctx, BATCH),
            n_ubatch=min(n_ctx, UBATCH),
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=logits_all,
            **(cache or CacheSettings()).llama_kwargs(),
            seed=0,
            verbose=False,
        )
    try:
        yield llm
    finally:
        llm.close()


def _runner(llm: Any, decode_prompt: list[int], prefill_prompt: list[int], settings: MeasureSettings) -> Any:
    return lambda: (time_decode(llm, decode_prompt, settings.decode_tokens), time_prefill(llm, prefill_prompt))


def _n_ctx(settings: MeasureSettings) -> int:
    """The context a measurement opens: the prefill prompt, or the decode prompt and the tokens decoded after it."""
    return max(settings.prompt_tokens, settings.context + settings.decode_tokens) + 8


@contextlib.contextmanager
def _measure_gguf(path: Path, settings: MeasureSettings) -> Iterator[Any]:
    """The model opened for measuring, refused with a UserError where the context asked for (`--context`) is
    longer than the one the model was trained for."""
    n_ctx = _n_ctx(settings)
    with open_gguf(path, n_ctx=n_ctx, threads=settings.threads, cache=CacheSettings.of(path.parent)) as llm:
        trained = int(llm._model.n_ctx_train())
        if n_ctx > trained > 0:
            raise UserError(
                f"--context {settings.context}: the model holds {trained} tokens, and timing decode there takes "
                f"{n_ctx}; give --context {max(1, trained - settings.decode_tokens - 8)} or less"
            )
        yield llm


def _warm() -> None:
    """Load llama.cpp's library and backends before the baseline of resident memory is taken."""
    import llama_cpp

    _quiet()
    llama_cpp.llama_backend_init()


def _quiet() -> None:
    """llama.cpp logs every tensor it quantizes or loads to stderr: keep errors only."""
    from llama_cpp import _logger

    _logger.set_verbose(False)


def _last_logits(llm: Any) -> Any:
    import numpy as np

    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))


def time_decode(llm: Any, prompt: list[int], new_tokens: int) -> list[float]:
    """Greedy generation with llama.cpp's KV cache; ms for each generated token after the first (prefill)."""
    llm.reset()
    llm.eval(prompt)
    nxt = int(_last_logits(llm).argmax())
    times = []
    for _ in range(new_tokens - 1):
        t0 = time.perf_counter()
        llm.eval([nxt])
        nxt = int(_last_logits(llm).argmax())
        times.append((time.perf_counter() - t0) * 1000)
    return times


def time_prefill(llm: Any, prompt: list[int]) -> float:
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    return (time.perf_counter() - t0) * 1000


class LlamaCppLM:
    """Just enough of a transformers causal LM for `autoslm.evaluate`: `model(input_ids=...).logits`.

    Rows are decoded by llama.cpp as independent sequences of one context (unified KV cache, up to `MAX_SEQS`
    sequences of `n_ctx` tokens in all), from an empty cache; left padding (marked by `attention_mask`) is skipped.
    With `logits_to_keep` only the last positions' logits are computed: the vocabulary projection dominates small
    models, and one call per short row costs ~40 ms here. The tokens go to `llama_decode` `BATCH` at a time, a
    sequence continuing in the next call where it does not fit: llama.cpp's output buffer and its graph's result
    are each `BATCH` x vocabulary floats (sized by the context, they were 1,024 x 152k floats, 623 MB each, for
    Qwen2.5's vocabulary). `BATCH` None: 512 tokens, fewer for a vocabulary that would make those buffers larger
    than `BUFFER_MB` (Gemma-3's 262k: 256 tokens, 510 MB less for 2% more time; benchmarks/eval_batch.py)."""

    MAX_SEQS = 64
    BATCH: int | None = None
    BUFFER_MB = 256
    # every window is decoded in calls of its own (BATCH tokens of one sequence), so its figures do not depend on
    # the windows beside it: one per call holds one window's logits at a time (`evaluate._perplexity_kld`)
    windows_per_call = 1
    # task rows are independent sequences too: 16 per call keeps their logits (rows x kept positions x vocabulary
    # floats) to 150 MB for Gemma-3, in as many llama_decode calls as 64 rows at `BATCH` tokens per call
    rows_per_call = 16

    def __init__(
        self, llm: Any, n_ctx: int, threads: int = THREADS, batch: int | None = None, cache: CacheSettings | None = None
    ) -> None:
        import llama_cpp
        from llama_cpp import _internals

        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        if cache is not None and cache != CacheSettings():  # else llama.cpp's defaults (F16, flash attention: auto)
            kwargs = cache.llama_kwargs()
            params.type_k, params.type_v = kwargs["type_k"], kwargs["type_v"]
            if cache.flash_attn:
                params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        vocab = llm.n_vocab()
        params.n_batch = params.n_ubatch = self.n_batch = min(batch or self.BATCH or self.tokens_per_call(vocab), n_ctx)
        params.n_seq_max = self.max_seqs = min(self.MAX_SEQS, self.n_batch)  # llama.cpp: at most one per token
        params.kv_unified = True
        params.n_threads = params.n_threads_batch = threads
        self.n_ctx = n_ctx
        with _stderr_to(Path(os.devnull)):  # Gemma-3's sliding-window cache note bypasses the logger
            self.ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
        self.batch = _internals.LlamaBatch(n_tokens=self.n_batch, embd=0, n_seq_max=self.max_seqs, verbose=False)
        self.vocab = vocab

    @classmethod
    def tokens_per_call(cls, vocab: int) -> int:
        """512 tokens, or the largest power of two whose logits (tokens x `vocab` floats) fit `BUFFER_MB`."""
        fit = cls.BUFFER_MB * 2**20 // (4 * max(vocab, 1))
        return max(32, min(512, 1 << max(fit, 1).bit_length() - 1))

    def close(self) -> None:
        self.batch.close()
        self.ctx.close()

    def __call__(self, input_ids: Any, attention_mask: Any = None, logits_to_keep: int = 0, **_: Any) -> Any:
        import numpy as np
        import torch

        width = input_ids.shape[1]
        keep = min(logits_to_keep, width) if logits_to_keep else width
        out = np.zeros((input_ids.shape[0], keep, self.vocab), dtype=np.float32)
        rows = []
        for i, ids in enumerate(input_ids.tolist()):
            start = int((attention_mask[i] == 0).sum()) if attention_mask is not None else 0
            rows.append((i, ids[start:]))
        group: list[tuple[int, list[int]]] = []
        for row in rows:
            if group and (sum(len(t) for _, t in group) + len(row[1]) > self.n_ctx or len(group) == self.max_seqs):
                self._decode(group, keep, out)
                group = []
            group.append(row)
        if group:
            self._decode(group, keep, out)
        return SimpleNamespace(logits=torch.from_numpy(out))

    def _decode(self, group: list[tuple[int, list[int]]], keep: int, out: Any) -> None:
        """Decode `group`'s sequences from an empty cache, `n_batch` tokens per call; their last `keep` logits
        into `out`."""
        import numpy as np

        self.ctx.kv_cache_clear()
        tokens = []  # (sequence, position, token, (row, column) of `out` for its logits or None)
        for seq, (i, ids) in enumerate(group):
            if len(ids) > self.n_ctx:
                raise ValueError(f"a sequence of {len(ids)} tokens exceeds the context of {self.n_ctx}")
            first_kept = len(ids) - min(keep, len(ids))
            tokens += [
                (seq, pos, t, (i, keep - len(ids) + pos) if pos >= first_kept else None) for pos, t in enumerate(ids)
            ]
        batch = self.batch.batch
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            batch.n_tokens = len(chunk)
            for j, (seq, pos, token, target) in enumerate(chunk):
                batch.token[j], batch.pos[j], batch.n_seq_id[j] = token, pos, 1
                batch.seq_id[j][0] = seq
                batch.logits[j] = target is not None
            self.ctx.decode(self.batch)
            targets = [target for *_, target in chunk if target is not None]
            if targets:
                logits = np.ctypeslib.as_array(self.ctx.get_logits(), shape=(len(targets) * self.vocab,))
                where = np.array(targets)
                out[where[:, 0], where[:, 1]] = logits.reshape(-1, self.vocab)


F32_EXPORTS: dict[str, Path] = {}  # weights + config digest -> folder with f32.gguf, config.json, tokenizer files


def f32_export(model: Any, tokenizer: Any) -> Path:
    """A folder holding the model exported as an F32 GGUF (`f32.gguf`) with its config.json and tokenizer files,
    exported once per distinct weights and config in this process (the latest one is kept, in the temporary
    directory): a search quantizes the same unpruned model in most of its llama.cpp-only trials (3.6 s saved per
    trial for SmolLM2-135M). `model`: a torch model, or `ModelFiles` (exported from its files)."""
    import atexit
    import hashlib
    import tempfile

    from autoslm import checkpoint
    from autoslm.llamacpp import export_gguf
    from autoslm.models import ModelFiles, fingerprint

    files = isinstance(model, ModelFiles)
    weights = model.fingerprint if files else fingerprint(model)
    key = hashlib.sha256(f"{weights}:{model.config.to_json_string()}".encode()).hexdigest()[:16]
    folder = F32_EXPORTS.get(key)
    if folder is not None and (folder / "f32.gguf").is_file():
        return folder
    for old in F32_EXPORTS.values():
        shutil.rmtree(old, ignore_errors=True)
    F32_EXPORTS.clear()
    folder = Path(tempfile.mkdtemp(prefix=f"autoslm-f32-{key}-"))  # the key in its name: the imatrix cache's key
    atexit.register(shutil.rmtree, folder, True)
    if files:  # the converter reads the weight files themselves
        for name in (*TOKENIZER_FILES, "config.json"):
            if (model.source_dir / name).is_file():
                shutil.copy2(model.source_dir / name, folder / name)
        export_gguf(model.source_dir, folder / "f32.gguf.tmp").rename(folder / "f32.gguf")
    else:
        checkpoint.save_dir(model, tokenizer, folder)
        export_gguf(folder, folder / "f32.gguf.tmp").rename(folder / "f32.gguf")
        (folder / "model.safetensors").unlink(missing_ok=True)  # only the GGUF is reused
    F32_EXPORTS[key] = folder
    return folder


def _link_or_copy(src: Path, dst: Path) -> None:
    """`dst` as a hard link to `src` (same bytes, same page cache: a 3B model's F32 GGUF is 12.8 GB), a copy where
    the two folders lie on different file systems."""
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


IMATRIX_CACHE: dict[str, dict[str, Any]] = {}  # F32 export + settings -> importance matrix, this process


def cached_importance_matrix(f32: Path, tokenizer: Any, samples: int, seq_len: int) -> dict[str, Any]:
    """`importance_matrix` of an F32 GGUF that `f32_export` wrote (its folder's name holds the key of its weights
    and config), computed once per distinct export in this process: a search tries several llama.cpp types on the
    same candidate (its warm start tries every preset on the unpruned model)."""
    key = f"{Path(f32).parent.name}:{samples}:{seq_len}"
    if key not in IMATRIX_CACHE:
        if len(IMATRIX_CACHE) >= 4:
            IMATRIX_CACHE.pop(next(iter(IMATRIX_CACHE)))
        IMATRIX_CACHE[key] = importance_matrix(f32, tokenizer, samples, seq_len)
    return IMATRIX_CACHE[key]


def importance_matrix(gguf: Path, tokenizer: Any, samples: int, seq_len: int) -> dict[str, Any]:
    """What llama.cpp's imatrix tool computes, by llama.cpp (`autoslm/llamacpp/imatrix.py`) on `gguf`: for each
    weight (by its GGUF name), the mean over `samples` calibration windows of `seq_len` tokens of the squared input
    of each of its columns."""
    from autoslm import data
    from autoslm.llamacpp.imatrix import importance_matrix as collect

    windows = data.token_windows(tokenizer, "calibration", seq_len=seq_len, count=samples, seed=0)
    return collect(Path(gguf), [[int(t) for t in row] for row in windows.tolist()])


def gguf_linear_names(model: Any) -> dict[str, str]:
    """The torch model's linear layers that become GGUF tensors: module name -> GGUF tensor name without
    `.weight` (`model.layers.3.self_attn.v_proj` -> `blk.3.attn_v`)."""
    import torch

    linear = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    return gguf_weight_names(model.config, linear)


def gguf_weight_names(config: Any, modules: Iterable[str]) -> dict[str, str]:
    """Module names (`model.layers.3.self_attn.v_proj`, as in the weight files without `.weight`) -> the GGUF
    tensor names llama.cpp's converter gives their weights (`blk.3.attn_v`); names it does not map are left out."""
    import gguf

    from autoslm.llamacpp import gguf_arch

    names = gguf.get_tensor_name_map(gguf_arch(config), int(config.num_hidden_layers))
    out = {}
    for name in modules:
        found = names.get_name(name + ".weight", try_suffixes=(".weight",))
        if found:
            out[name] = found.removesuffix(".weight")
    return out


def fake_quantize(weight: Any, kind: str, imatrix: Any = None) -> Any:
    """`weight` (rows, columns) as llama.cpp stores it in `kind` and reads it back: the same rounding
    (`ggml_quantize_chunk` from llama.cpp's own library, weighted by `imatrix` per column when given), dequantized
    by the gguf package. Rows are quantized independently, so the q/k row order GGUF export uses does not matter."""
    import ctypes

    import gguf
    import numpy as np
    import torch

    lib = _ggml()
    qtype = TENSOR_TYPES[kind]
    w = np.ascontiguousarray(weight.detach().float().cpu().numpy())
    rows, columns = w.shape
    if kind in K_TYPES and columns % 256:
        raise ValueError(f"{kind} needs rows of a multiple of 256 values, not {columns}")
    row_bytes = lib.ggml_row_size(qtype, columns)
    buf = np.empty(rows * row_bytes, dtype=np.uint8)
    im = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    done = lib.ggml_quantize_chunk(qtype, w.ctypes.data, buf.ctypes.data, 0, rows, columns,
                                   None if im is None else im.ctypes.data_as(ctypes.c_void_p))  # fmt: skip
    if done != rows * row_bytes:
        raise RuntimeError(f"ggml_quantize_chunk wrote {done} bytes, expected {rows * row_bytes}")
    out = gguf.quants.dequantize(buf.reshape(rows, row_bytes), gguf.GGMLQuantizationType(qtype))
    return torch.from_numpy(np.ascontiguousarray(out.reshape(rows, columns))).to(weight.dtype)


_GGML: list[Any] = []


def _ggml() -> Any:
    """llama.cpp's ggml base library (shipped inside llama-cpp-python), with the two functions fake_quantize uses."""
    import ctypes

    import llama_cpp

    if not _GGML:
        lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                            ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]  # fmt: skip
        lib.ggml_row_size.restype = ctypes.c_size_t
        lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
        _GGML.append(lib)
    return _GGML[0]


def quantize(src: Path, dst: Path, config: dict[str, Any], imatrix: dict[str, Any] | None = None) -> Path:
    """`llama_model_quantize` from an F32 GGUF: the whole-model type, then the output / token-embedding types and
    per-tensor overrides (`{"attn_v": "Q8_0"}` matches `blk.N.attn_v.weight`), weighted by `imatrix` (GGUF tensor
    name -> per-column importance) when given."""
    import ctypes

    import llama_cpp

    _quiet()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[config["type"]]
    params.nthread = 2
    if config.get("output_type"):
        params.output_tensor_type = TENSOR_TYPES[config["output_type"]]
    if config.get("token_embd_type"):
        params.token_embedding_type = TENSOR_TYPES[config["token_embd_type"]]
    overrides = sorted((config.get("overrides") or {}).items())
    keep: list[Any] = []  # the pattern strings must outlive the call
    if overrides:
        array = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()
        for i, (tensor, kind) in enumerate(overrides):
            pattern = _override_pattern(tensor).encode()
            keep.append(pattern)
            array[i].pattern, array[i].type = pattern, TENSOR_TYPES[kind]
        array[len(overrides)].pattern = None
        params.tt_overrides = ctypes.cast(array, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
        keep.append(array)
    if imatrix:
        import numpy as np

        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(sorted(imatrix.items())):
            values = np.ascontiguousarray(values, dtype=np.float32)
            keep += [values, name.encode()]
            entries[i].name = keep[-1]
            entries[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = values.size
        entries[len(imatrix)].name = None
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        keep.append(entries)
    _check_block_sizes(src, config)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with _stderr_to(dst.with_suffix(".quantize.log")) as log:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        last = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:] or ["no output"]
        raise RuntimeError(f"llama_model_quantize to {config['type']} failed (code {rc}): {last[0].strip()}")
    log.unlink(missing_ok=True)
    return dst


K_TYPES = set(K_FALLBACK)


def embedding_types(hidden_size: int) -> tuple[str, ...]:
    """Types worth searching for a token embedding with rows of `hidden_size` values: k-quants only when that is a
    multiple of 256 (llama.cpp fails on an explicit k-quant otherwise, e.g. on SmolLM2's 576-wide embedding)."""
    return ("Q8_0", "Q6_K", "Q4_K") if hidden_size % 256 == 0 else ("Q8_0", "Q5_0", "Q4_0")


def _override_pattern(tensor: str) -> str:
    """A tensor class (`attn_v`: that tensor in every block) or one tensor (`blk.3.attn_v`) as llama.cpp's regex."""
    import re

    return f"^{re.escape(tensor)}\\.weight$" if "." in tensor else f"\\.{tensor}\\.weight$"


def _check_block_sizes(src: Path, config: dict[str, Any]) -> None:
    """An explicitly chosen k-quant type needs rows that are a multiple of 256 long (llama.cpp aborts otherwise)."""

    from autoslm.checkpoint import gguf_tensors

    wanted = {"token_embd": config.get("token_embd_type"), "output": config.get("output_type")}
    wanted |= dict(config.get("overrides") or {})
    wanted = {k: v for k, v in wanted.items() if v in K_TYPES}
    if not wanted:
        return
    for t in gguf_tensors(src):
        kind = next((k for k in (t.name.removesuffix(".weight"), t.name.split(".")[-2]) if k in wanted), None)
        if kind and t.shape[0] % 256:
            raise UserError(
                f"quant.gguf: {kind} type {wanted[kind]} needs rows of a multiple of 256 values; {t.name} has rows "
                f"of {int(t.shape[0])}: use Q8_0, Q5_0 or Q4_0 for it"
            )


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[Path]:
    """llama.cpp writes warnings straight to file descriptor 2: send them to `path` for the call's duration."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "wb") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield path
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _digest(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:16]
