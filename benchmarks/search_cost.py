"""A real search's cost against its forecast, on the scale benchmark's models: duration, and memory summed over
the search's processes.

    python benchmarks/search_cost.py [--model qwen2.5-0.5b] [--space llamacpp-quant] [--trials 6]
                                     [--budget "size_mb<=0.35x"] [--json out.json]

The model is SmolLM2-135M or Gemma-3-270M (`--model smollm2-135m`), or a random-weight model with a real shape
from `benchmarks/scale.py` (built into a temporary folder, in bf16). `autoslm search` runs as users run it (the
CLI, llama.cpp runtime, the local target), while this script samples the resident memory of the search process
and of every process it starts, every 0.25 s: the peak of their sum, and of each. Printed: the search's forecast
line, the one revised after the first trial, and the closing "took ...; the forecast said ..." line (both errors),
the peak memory summed and per process against the model's fp32 size, and the load average before. A file-backed
page both processes map (the F32 GGUF) counts in each: the sum is an upper bound. Nothing else should run
meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def sample(pid: int, stop: threading.Event, peaks: dict[str, float]) -> None:
    """Peak resident MB of the process tree under `pid`: summed, the search process's, and the largest child's."""
    import psutil

    root = psutil.Process(pid)
    while not stop.is_set():
        try:
            children = root.children(recursive=True)
            own = root.memory_info().rss / 2**20
        except psutil.Error:
            break
        kids = []
        for child in children:
            try:
                kids.append(child.memory_info().rss / 2**20)
            except psutil.Error:
                continue
        peaks["total"] = max(peaks.get("total", 0.0), own + sum(kids))
        peaks["search"] = max(peaks.get("search", 0.0), own)
        peaks["child"] = max(peaks.get("child", 0.0), max(kids, default=0.0))
        stop.wait(0.25)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--space", default="llamacpp-quant")
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--budget", default="size_mb<=0.35x")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from scale import SHAPES, build

    from autoslm.quiet import quiet_libraries

    quiet_libraries()
    load = os.getloadavg()[0]
    print(f"load average before: {load:.2f} (nothing else was started by this script)", flush=True)
    work = Path(tempfile.mkdtemp(prefix="autoslm-search-cost-"))
    spec = str(build(args.model, work)) if args.model in SHAPES else args.model
    from autoslm.models import load_files

    params = load_files(spec).num_parameters
    fp32_mb = params * 4 / 2**20
    cmd = [sys.executable, "-m", "autoslm.cli", "search", "--model", spec, "--runtime", "llama.cpp", "--space",
           args.space, "--budget", args.budget, "--trials", str(args.trials), "--out", str(work / "run")]  # fmt: skip
    print("$ autoslm " + " ".join(cmd[3:]), flush=True)
    peaks: dict[str, float] = {}
    stop = threading.Event()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watcher = threading.Thread(target=sample, args=(proc.pid, stop, peaks), daemon=True)
    watcher.start()
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip())
        print("  | " + line.rstrip(), flush=True)
    proc.wait()
    stop.set()
    watcher.join()
    wall = time.perf_counter() - t0
    forecast = next((ln.strip() for ln in lines if ln.strip().startswith("forecast:")), None)
    revised = next((ln.strip() for ln in lines if ln.strip().startswith("forecast after the first trial:")), None)
    took = next((ln.strip() for ln in lines if re.search(r"took .*; the forecast said", ln)), None)
    record: dict[str, Any] = {
        "model": args.model, "parameters": params, "fp32_mb": fp32_mb, "space": args.space, "trials": args.trials,
        "budget": args.budget, "exit": proc.returncode, "wall_s": wall, "forecast": forecast, "revised": revised,
        "took": took,
        "peak_total_mb": peaks.get("total"), "peak_search_mb": peaks.get("search"),
        "peak_child_mb": peaks.get("child"), "load_before": load,
    }  # fmt: skip
    print(f"\n{args.model}: {params / 1e6:.0f}M parameters, fp32 {fp32_mb:.0f} MB; exit {proc.returncode}, "
          f"{wall / 60:.1f} min in all")  # fmt: skip
    print(f"  {forecast}\n  {revised}\n  {took}")
    total = peaks.get("total", 0.0)
    print(f"  peak memory summed over processes {total:.0f} MB ({total / fp32_mb:.2f}x fp32); search process "
          f"{peaks.get('search', 0):.0f} MB, largest child {peaks.get('child', 0):.0f} MB")  # fmt: skip
    print(f"load average at end: {os.getloadavg()[0]:.2f}; work folder {work}")
    if args.json:
        args.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
