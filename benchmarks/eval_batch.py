"""llama.cpp evaluation, tokens per `llama_decode` call: time and the memory it adds, at each of `--batches` (set as
`LlamaCppLM.BATCH`; by default 512 tokens, 256 for a vocabulary over ~131k), e.g. 512 against a call sized by the
context (1,024 tokens: what evaluation did before).

    python benchmarks/eval_batch.py [--model smollm2-135m] [--batches 512,1024] [--rounds 3] [--fidelity low]

`--model` is a registry name or one of scale.py's shapes (qwen2.5-0.5b, ...: random weights, built here). The model
is exported and quantized to Q4_K_M once (llama.cpp's converter and quantizer, no importance matrix); then each
round evaluates it once per batch size, interleaved, each in a fresh process: seconds, the resident memory the
evaluation added to the process (peak during it minus before it), and the perplexity (the same to 4 decimals, or the
two ways do not compute the same thing). Medians over rounds. Nothing else should run meanwhile; the output says
the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def prepare(model: str, folder: Path) -> Path:
    """`model` as a Q4_K_M GGUF checkpoint folder (config and tokenizer beside it)."""
    from autoslm import checkpoint
    from autoslm.models import load_model
    from autoslm.runtimes.llamacpp import GGUF, f32_export, quantize

    spec = model
    if model not in ("smollm2-135m", "gemma3-270m", "tiny-llama"):
        sys.path.insert(0, str(Path(__file__).parent))
        from scale import build

        spec = str(build(model, folder))
    lm = load_model(spec)
    source = f32_export(lm.model, lm.tokenizer)
    out = folder / "q4km"
    out.mkdir()
    quantize(source / "f32.gguf", out / GGUF, {"type": "Q4_K_M"})
    for f in source.iterdir():
        if f.name != "f32.gguf" and f.is_file():
            (out / f.name).write_bytes(f.read_bytes())
    checkpoint.write_manifest(out, [p.name for p in out.iterdir() if p.is_file()], runtime="llama.cpp")
    return out


def evaluate_once(folder: Path, fidelity: str, adjust: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """One llama.cpp evaluation of `folder` in this (fresh) process, after `adjust()` changed a setting: seconds, the
    resident MB it added (peak during it minus before it) and the perplexity. eval_memory.py uses it too."""
    from transformers import AutoTokenizer

    from autoslm.evaluate import Fidelity
    from autoslm.quiet import quiet_libraries
    from autoslm.runtimes import get_runtime
    from autoslm.runtimes.llamacpp import _warm
    from autoslm.targets.measure import peak_rss_mb, reset_peak_rss, rss_mb

    quiet_libraries()
    _warm()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    fid = Fidelity.preset(fidelity) if fidelity != "full" else Fidelity()
    adjust()
    before = rss_mb()
    reset_peak_rss()
    t0 = time.perf_counter()
    q = get_runtime("llama.cpp").evaluate(None, tokenizer, folder, fid)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "added_mb": peak_rss_mb() - before, "ppl": q.ppl}


def one(folder: Path, batch: int, fidelity: str) -> dict[str, Any]:
    """One evaluation in this (fresh) process, `batch` tokens per llama_decode call."""
    from autoslm.runtimes.llamacpp import LlamaCppLM

    return {"batch": batch, **evaluate_once(folder, fidelity, lambda: setattr(LlamaCppLM, "BATCH", batch))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batches", default="512,1024")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--fidelity", default="low", choices=["low", "full"])
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("AUTOSLM-EVAL " + json.dumps(one(Path(args.one[0]), int(args.one[1]), args.fidelity)), flush=True)
        return
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory(prefix="autoslm-evalbatch-") as tmp:
        folder = prepare(args.model, Path(tmp))
        results: dict[int, list[dict[str, Any]]] = {b: [] for b in batches}
        for r in range(args.rounds):
            for b in batches if r % 2 == 0 else batches[::-1]:  # interleaved, the order alternating
                cmd = [sys.executable, __file__, "--one", str(folder), str(b), "--fidelity", args.fidelity]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                row = json.loads(next(x for x in out.splitlines() if x.startswith("AUTOSLM-EVAL ")).split(" ", 1)[1])
                results[b].append(row)
                print(f"  round {r + 1} batch {b}: {row['seconds']:.1f} s, +{row['added_mb']:.0f} MB, "
                      f"ppl {row['ppl']:.4f}", flush=True)  # fmt: skip
    base = batches[-1]
    print(f"{args.model}, {args.fidelity} fidelity, medians of {args.rounds}:")
    for b in batches:
        s, mb = (statistics.median(x[k] for x in results[b]) for k in ("seconds", "added_mb"))
        ratio = s / statistics.median(x["seconds"] for x in results[base])
        print(f"  batch {b}: {s:.1f} s ({ratio:.2f}x batch {base}), +{mb:.0f} MB, ppl {results[b][0]['ppl']:.4f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
