"""What every runtime's measurement shares: the machine's fingerprint, resident-memory probes, percentiles."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any


def machine_fingerprint(threads: int | None = None) -> dict[str, str | int]:
    """CPU model, cores, threads, torch and OS: enough to tell two measuring machines apart."""
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, str | int] = {
        "cpu": cpu,
        "cores": os.cpu_count() or 0,
        "threads": threads or torch.get_num_threads(),
        "torch": torch.__version__.split("+")[0],
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


def rss_mb() -> float:
    kb = _status_kb("VmRSS")
    if kb is None:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return kb / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of resident memory (Linux), so the peak covers only what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    kb = _status_kb("VmHWM")
    if kb is None:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return kb / 1024


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def prompt_ids(tokenizer: Any, n: int, seed: int) -> list[int]:
    """A real-text prompt of exactly n tokens (held-out prose), repeated if the text is short."""
    from autoslm import data

    tokens = data.corpus_tokens(tokenizer, "heldout")
    start = (seed * 7919) % max(1, tokens.numel() - n)
    ids = tokens[start : start + n]
    if ids.numel() < n:
        ids = ids.repeat(n // max(1, ids.numel()) + 1)[:n]
    return [int(t) for t in ids]
