"""What every runtime's measurement shares: the machine's fingerprint, resident-memory probes, percentiles."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any

ISA_PREFIXES = ("avx2", "avx512", "amx", "avx_vnni", "fma", "f16c", "sve", "asimd", "bf16", "i8mm", "dotprod")


def cpu_description() -> dict[str, str]:
    """The first CPU's model name, family/model/stepping, cache, and the instruction-set flags kernels dispatch on
    (a virtual machine's model name is often just "AMD EPYC": the numbers and flags tell two such CPUs apart)."""
    fields = {"model name": "", "cpu family": "", "model": "", "stepping": "", "cache size": "", "CPU part": ""}
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if not key and flags:
                break  # the end of the first processor's block
            if key in fields and not fields[key]:
                fields[key] = value
            elif key in ("flags", "Features") and not flags:
                flags = sorted(f for f in value.split() if f.startswith(ISA_PREFIXES))
    except OSError:
        pass
    ident = "/".join(v for k, v in fields.items() if k != "model name" and v)
    return {"cpu": fields["model name"] or platform.processor() or "unknown", "cpu_id": ident, "isa": " ".join(flags)}


def machine_fingerprint(threads: int | None = None) -> dict[str, str | int]:
    """CPU model (name, family/model/stepping, cache, instruction sets), cores, threads, torch and OS: enough to tell
    two measuring machines apart."""
    from importlib import metadata

    if not threads:
        import torch

        threads = torch.get_num_threads()
    try:  # read without importing torch: a llama.cpp measuring process never loads it
        torch_version = metadata.version("torch").split("+")[0]
    except metadata.PackageNotFoundError:
        torch_version = "none"
    info: dict[str, str | int] = {
        **cpu_description(),
        "cores": os.cpu_count() or 0,
        "threads": threads,
        "torch": torch_version,
        "system": f"{platform.system()} {platform.machine()}",
    }
    info["id"] = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16]
    return info


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _status_mb(field: str) -> float:
    """A /proc/self/status figure in MB; where there is none, the process's peak resident size."""
    kb = _status_kb(field)
    if kb is None:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return kb / 1024


def rss_mb() -> float:
    return _status_mb("VmRSS")


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of resident memory (Linux), so the peak covers only what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    return _status_mb("VmHWM")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def prompt_ids(tokenizer: Any, n: int, seed: int) -> list[int]:
    """A real-text prompt of exactly n tokens (held-out prose), repeated if the text is short."""
    from autoslm import data

    tokens = data.corpus_ids(tokenizer, "heldout")
    start = (seed * 7919) % max(1, len(tokens) - n)
    ids = tokens[start : start + n]
    if len(ids) < n:
        ids = (ids * (n // max(1, len(ids)) + 1))[:n]
    return [int(t) for t in ids]


class TokenizerJson:
    """A checkpoint's tokenizer.json through the `tokenizers` library alone, called like a transformers tokenizer:
    a measuring process needs only the prompt's token ids, and loading a transformers tokenizer costs it ~2 s
    (and, in llama.cpp's worker, ~300 MB of resident memory for transformers and torch) before the model is loaded.
    The ids are the transformers tokenizer's (tests/runtimes/test_llamacpp.py)."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(path))
        self.name_or_path = str(path)

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids}

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size()


def prompts(directory: Path, settings: Any) -> tuple[list[int], list[int]]:
    """The decode prompt (`settings.context` tokens: the KV cache decode is timed at) and the prefill prompt
    (`settings.prompt_tokens`) of a checkpoint directory, from its tokenizer.json where it has one, else its
    transformers tokenizer."""
    from autoslm import checkpoint

    path = Path(directory) / "tokenizer.json"
    tokenizer = TokenizerJson(path) if path.is_file() else checkpoint.load_tokenizer(Path(directory))
    decode = prompt_ids(tokenizer, settings.context, settings.seed)
    return decode, prompt_ids(tokenizer, settings.prompt_tokens, settings.seed + 1)


Timer = Any  # () -> (decode ms per token list, prefill ms): one decode run and one prefill of a loaded model


def timed_runs(run: Timer, settings: Any) -> dict[str, float]:
    """`settings.warmup` untimed then `settings.repeats` timed runs: median and p90 decode ms/token, median prefill."""
    decode: list[float] = []
    prefill: list[float] = []
    for i in range(settings.warmup + settings.repeats):
        d, p = run()
        if i >= settings.warmup:
            decode += d
            prefill.append(p)
    return {
        "decode_ms": statistics.median(decode),
        "decode_p90_ms": percentile(decode, 0.9),
        "prefill_ms": statistics.median(prefill),
    }


def alternate(baseline: Timer, candidate: Timer, settings: Any, rounds: int) -> dict[str, Any]:
    """Time two loaded models alternately, the order flipping every round; a PairMeasurement dict.

    Each round times each model as a single measurement does (`settings.repeats` decode runs and prefills), after
    `settings.warmup` untimed runs of each. Fresh processes differ from each other by more than the two halves of
    one round do (docs/benchmarks.md, close-call rechecks), so the ratio is taken inside one process. Memory is not
    measured: with both models resident it would mean nothing.
    """
    from autoslm.targets import PairMeasurement, interference

    runs = {"baseline": baseline, "candidate": candidate}
    gate = interference.gate(settings.quiet_wait_s)
    before = interference.sample()
    for run in runs.values():
        for _ in range(settings.warmup):
            run()
    once = settings.model_copy(update={"warmup": 0})
    per_round: dict[str, list[dict[str, float]]] = {"baseline": [], "candidate": []}
    for r in range(rounds):
        for name in ("baseline", "candidate") if r % 2 == 0 else ("candidate", "baseline"):
            per_round[name].append(timed_runs(runs[name], once))
    figures = interference.with_gate(interference.figures(before, interference.sample()), gate)
    pair = PairMeasurement.from_rounds(per_round["baseline"], per_round["candidate"], how="one process")
    return {**pair.model_dump(), "interference": figures}


def measure_loaded(
    directory: Path, settings: Any, open_model: Any, runner: Any, target: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The measurement every runtime makes, in this process: load the model (`open_model()`: a context manager
    giving it), time it (`runner(model)`: a Timer), and take memory_mb = peak resident memory during use minus the
    resident memory just before loading (the runtime warmed up already). Returns the fields of Measurement."""
    import time

    from autoslm import checkpoint
    from autoslm.targets import interference

    base = rss_mb()
    t0 = time.perf_counter()
    with open_model() as model:
        load_s = time.perf_counter() - t0
        reset_ok = reset_peak_rss()
        gate = interference.gate(settings.quiet_wait_s)  # after loading, before timing
        before = interference.sample()
        timing = timed_runs(runner(model), settings)
        after = interference.sample()
        peak = peak_rss_mb() if reset_ok else max(rss_mb(), peak_rss_mb())
    figures = interference.figures(before, after, timing["decode_p90_ms"] / timing["decode_ms"])
    return {
        **timing,
        "interference": interference.with_gate(figures, gate),
        "prompt_tokens": settings.prompt_tokens,
        "context": settings.context,
        "memory_mb": max(0.0, peak - base),
        "size_mb": checkpoint.weights_size_mb(Path(directory)),
        "bpw": checkpoint.weights_bpw(Path(directory)),
        "load_s": load_s,
        "target": {**machine_fingerprint(settings.threads), **(target or {})},
    }
