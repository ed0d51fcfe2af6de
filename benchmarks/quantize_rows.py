"""Why quantizing grows faster than the weights across the scale shapes: llama.cpp's cost per value of each type
that Q4_K_M writes, with and without an importance matrix, on rows as long as the shapes' hidden sizes.

    python benchmarks/quantize_rows.py [--values 8388608] [--repeats 3] [--json out.json]

`benchmarks/scale.py` found quantize (Q4_K_M with an importance matrix) at 9 s for Qwen2.5-0.5B's shape and 82 s
for Qwen2.5-1.5B's: 9x the time for 3.1x the weights. Q4_K_M asks for k-quants (Q4_K, Q6_K), which need rows of a
multiple of 256 values; Qwen2.5-0.5B's hidden size is 896 (3.5 x 256), so every tensor whose rows are that long
falls back to a 32-value block type (Q5_0, Q8_0), while Qwen2.5-1.5B's 1536 and Llama-3.2-3B's 3072 take the
k-quants. This script times `ggml_quantize_chunk` (the quantizer `llama_model_quantize` calls, from the library
llama-cpp-python ships, 1 thread) on `--values` random values per type and row length, median of `--repeats`, and
prints seconds per million values. Nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--values", type=int, default=8 * 2**20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import numpy as np

    from autoslm.llamacpp.types import TENSOR_TYPES
    from autoslm.runtimes.llamacpp import _ggml

    lib = _ggml()
    print(f"load average at start: {os.getloadavg()[0]:.2f} (nothing else was started by this script)", flush=True)
    rng = np.random.default_rng(0)
    results = []
    for columns, what in ((896, "Qwen2.5-0.5B hidden"), (1536, "Qwen2.5-1.5B hidden"), (3072, "Llama-3.2-3B hidden")):
        rows = args.values // columns
        w = np.ascontiguousarray(rng.normal(0, 0.02, (rows, columns)).astype(np.float32))
        imatrix = np.ascontiguousarray(rng.uniform(0.5, 2.0, columns).astype(np.float32))
        for kind in ("Q4_K", "Q6_K", "Q5_0", "Q8_0"):
            if kind.endswith("_K") and columns % 256:
                continue  # llama.cpp falls back for such rows; Q5_0 / Q8_0 are what it writes instead
            qtype = TENSOR_TYPES[kind]
            buf = np.empty(rows * lib.ggml_row_size(qtype, columns), dtype=np.uint8)
            for weighted in (False, True):
                im = imatrix.ctypes.data_as(ctypes.c_void_p) if weighted else None
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    lib.ggml_quantize_chunk(qtype, w.ctypes.data, buf.ctypes.data, 0, rows, columns, im)
                    times.append(time.perf_counter() - t0)
                per_m = statistics.median(times) / (rows * columns) * 1e6
                results.append({"columns": columns, "type": kind, "imatrix": weighted, "s_per_million": per_m})
                print(f"rows of {columns:>4} ({what}): {kind:<5} {'with' if weighted else 'without'} imatrix "
                      f"{per_m * 1000:7.2f} ms per million values", flush=True)  # fmt: skip
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
