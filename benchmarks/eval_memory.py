"""What llama.cpp evaluation adds to a process's resident memory, and what each of its four bounds saves.

    python benchmarks/eval_memory.py [--model gemma3-270m] [--rounds 2] [--fidelity full] [--json out.json]

The model (a registry name or one of scale.py's shapes) is exported and quantized to Q4_K_M once
(`eval_batch.prepare`). Each evaluation then runs in a fresh process, in one of these settings:

  now            as autoslm evaluates: one perplexity window per call (`LlamaCppLM.windows_per_call`), 16 task
                 rows per call (`rows_per_call`), tokens per llama_decode call by vocabulary (`tokens_per_call`: 256
                 for Gemma-3's 262k), freed large blocks unmapped (`autoslm.allocator`)
  2 windows      two perplexity windows per call, the rest as now
  64 rows        64 task rows per call
  512 tokens     512 tokens per llama_decode call
  heap           glibc's moving mmap threshold (freed blocks up to 32 MB stay on the heap)
  all four back  all of them as before (the in-place log-softmax and the released views are code and stay)

Printed per setting (medians over rounds, the settings interleaved): seconds, the process's peak resident MB during
the evaluation minus before it (the model file's pages included), and the perplexity (identical in every setting, or
they do not compute the same thing). Nothing else should run meanwhile; the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SETTINGS: dict[str, dict[str, Any]] = {
    "now": {},
    "2 windows": {"windows_per_call": 2},
    "64 rows": {"rows_per_call": 64},
    "512 tokens": {"BATCH": 512},
    "heap": {"heap": True},
    "all four back": {"windows_per_call": 2, "rows_per_call": 64, "BATCH": 512, "heap": True},
}


def one(folder: Path, setting: str, fidelity: str) -> dict[str, Any]:
    """One evaluation in this (fresh) process, in `setting` (eval_batch.py's `evaluate_once`)."""
    from eval_batch import evaluate_once

    from autoslm import allocator
    from autoslm.runtimes.llamacpp import LlamaCppLM

    def adjust() -> None:
        for name, value in SETTINGS[setting].items():
            if name == "heap":
                allocator.unmap_large_blocks = lambda: False  # glibc's own threshold, moving
            else:
                setattr(LlamaCppLM, name, value)

    return {"setting": setting, **evaluate_once(folder, fidelity, adjust)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--fidelity", default="full", choices=["low", "full"])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("AUTOSLM-EVAL " + json.dumps(one(Path(args.one[0]), args.one[1], args.fidelity)), flush=True)
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from eval_batch import prepare

    print(f"load average before: {os.getloadavg()[0]:.2f} (nothing else was started by this script)")
    names = list(SETTINGS)
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="autoslm-evalmem-") as tmp:
        folder = prepare(args.model, Path(tmp))
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:  # interleaved, the order alternating
                cmd = [sys.executable, __file__, "--one", str(folder), name, "--fidelity", args.fidelity]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                row = json.loads(next(x for x in out.splitlines() if x.startswith("AUTOSLM-EVAL ")).split(" ", 1)[1])
                results[name].append(row)
                print(f"  round {r + 1} {name:13s}: {row['seconds']:.1f} s, +{row['added_mb']:.0f} MB, "
                      f"ppl {row['ppl']:.4f}", flush=True)  # fmt: skip
    print(f"{args.model} (Q4_K_M), {args.fidelity} fidelity, medians of {args.rounds}:")
    summary = {}
    for name in names:
        s, mb = (statistics.median(x[k] for x in results[name]) for k in ("seconds", "added_mb"))
        summary[name] = {"seconds": s, "added_mb": mb, "ppl": results[name][0]["ppl"]}
        now = summary.get("now", summary[name])
        print(f"  {name:13s}: {s:5.1f} s ({s / now['seconds']:.2f}x now), +{mb:5.0f} MB "
              f"({mb - now['added_mb']:+.0f} MB against now), ppl {summary[name]['ppl']:.4f}")  # fmt: skip
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "fidelity": args.fidelity, "rounds": results,
                                         "medians": summary}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
