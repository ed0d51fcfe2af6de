"""Decode time and memory at a filled KV cache (`--context`, as `llama-bench -d N`), in llama.cpp, side by side.

    python benchmarks/context_depth.py [--models smollm2-135m,gemma3-270m] [--depths 16,1024,4096]
                                       [--rounds 1] [--repeats 2] [--json docs/results/context_depth_DATE.json]

For each model: Q8_0 and Q4_K_M GGUFs (llama.cpp's quantization of the F32 export) with llama.cpp's default F16
cache, and the Q8_0 GGUF with each KV-cache format of the technique kv.cache_type (f16 with flash attention, q8_0,
q4_0). Every checkpoint is measured at every depth in a fresh process (autoslm's local target: 1 warm-up, `--repeats`
timed runs, each filling the cache anew, 2 threads), `--rounds` times, the order reversed every other round, so drift
of the machine hits every cell alike; figures are medians over rounds. Held-out perplexity (low fidelity, llama.cpp)
is printed for each cache format: the price of its memory. 16 is autoslm's default depth (decode right after a short
prompt); llama-bench's -d 0 has no prompt at all.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from autoslm.quiet import quiet_libraries

CHECKPOINTS: list[tuple[str, list[dict[str, Any]]]] = [
    ("Q8_0", [{"technique": "quant.gguf", "params": {"type": "Q8_0"}}]),
    ("Q4_K_M", [{"technique": "quant.gguf", "params": {"type": "Q4_K_M"}}]),
    ("Q8_0, cache f16 + flash attention", [
        {"technique": "quant.gguf", "params": {"type": "Q8_0"}}, {"technique": "kv.cache_type", "params": {}}]),
    ("Q8_0, cache q8_0", [
        {"technique": "quant.gguf", "params": {"type": "Q8_0"}},
        {"technique": "kv.cache_type", "params": {"k": "q8_0", "v": "q8_0"}}]),
    ("Q8_0, cache q4_0", [
        {"technique": "quant.gguf", "params": {"type": "Q8_0"}},
        {"technique": "kv.cache_type", "params": {"k": "q4_0", "v": "q4_0"}}]),
]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m")
    ap.add_argument("--depths", default="16,1024,4096")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per measurement (each fills the cache anew)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    quiet_libraries()
    from autoslm.evaluate import Fidelity
    from autoslm.models import load_files
    from autoslm.pipeline import Step, plan
    from autoslm.runtimes import check_policy, get_runtime
    from autoslm.targets import MeasureSettings, get_target

    print(f"load average at start: {os.getloadavg()[0]:.2f} (nothing else was started by this script)", flush=True)
    rt, target = get_runtime("llama.cpp"), get_target("local")
    depths = [int(d) for d in args.depths.split(",")]
    work = Path(tempfile.mkdtemp(prefix="autoslm-depth-"))
    cells: list[dict[str, Any]] = []
    for model in args.models.split(","):
        files = load_files(model)
        for name, steps in CHECKPOINTS:
            planned = plan([Step(**s) for s in steps])
            check_policy("llama.cpp", planned)
            directory = work / f"{model}-{len(cells)}"
            rt.save(files, files.tokenizer, directory, planned)
            ppl = rt.evaluate(None, files.tokenizer, directory, Fidelity.preset("low")).ppl
            print(f"built {model} {name}: {rt_size(directory):.0f} MB, ppl {ppl:.3f}", flush=True)
            for depth in depths:
                cells.append({"model": model, "checkpoint": name, "depth": depth, "ppl": ppl, "dir": directory,
                              "decode_ms": [], "memory_mb": []})  # fmt: skip
    t0 = time.perf_counter()
    for r in range(args.rounds):
        for cell in cells if r % 2 == 0 else reversed(cells):
            settings = MeasureSettings(runtime="llama.cpp", context=cell["depth"], repeats=args.repeats)
            m = target.measure(cell["dir"], settings)
            cell["decode_ms"].append(m.decode_ms)
            cell["memory_mb"].append(m.memory_mb)
            print(f"  {cell['model']} {cell['checkpoint']} at {cell['depth']}: {m.decode_ms:.2f} ms, "
                  f"{m.memory_mb:.1f} MB", flush=True)  # fmt: skip
        print(f"round {r + 1}/{args.rounds} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}\n")
    print(
        f"{'model':<14} {'checkpoint':<34} {'depth':>6} {'decode ms':>10} {'x first':>10} {'memory MB':>10} {'ppl':>8}"
    )
    rows = []
    for cell in cells:
        decode, memory = statistics.median(cell["decode_ms"]), statistics.median(cell["memory_mb"])
        first = next(c for c in cells if c["model"] == cell["model"] and c["checkpoint"] == cell["checkpoint"])
        ratio = decode / statistics.median(first["decode_ms"])
        print(f"{cell['model']:<14} {cell['checkpoint']:<34} {cell['depth']:>6} {decode:>10.2f} {ratio:>9.2f}x "
              f"{memory:>10.1f} {cell['ppl']:>8.3f}")  # fmt: skip
        rows.append({k: v for k, v in cell.items() if k != "dir"} | {"decode_ms_median": decode,
                                                                    "memory_mb_median": memory})  # fmt: skip
    if args.json:
        summary = {"rounds": args.rounds, "repeats": args.repeats, "threads": 2, "rows": rows}
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


def rt_size(directory: Path) -> float:
    from autoslm import checkpoint

    return checkpoint.weights_size_mb(directory)


if __name__ == "__main__":
    main()
