"""Roofline: decode tokens/s of candidates against the memory-bandwidth bound of this machine.

    python benchmarks/roofline.py [--model smollm2-135m] [--policy-from RUN_DIR] [--rounds 3]
                                  [--out runs/bench-candidates] [--json FILE]

Decoding one token at batch 1 reads every weight matrix once (the embedding only one row; a tied lm_head reads
the whole matrix), so tokens/s cannot exceed bandwidth / weight bytes read per token. This script
1. measures this machine's memory bandwidth with torch on 1 GiB buffers, threads pinned as in a measurement:
   copy (dst.copy_(src), counted as read + write, like STREAM) and read (src.sum()); median of 10 after warm-up;
2. counts the weight bytes each candidate reads per decoded token, from the loaded model after one forward (the
   tensor each layer actually multiplies with: neural-compressor's weight-only layers dequantize to fp32 once and
   keep that, torch's dynamic int8 layers read int8);
3. measures decode ms/token of each candidate with the search's own measurement (fresh process), `--rounds`
   times interleaved, and prints measured tokens/s, the bound and the fraction of the bound reached.
Candidates: the fp32 baseline, bf16, dynamic int8, weight-only int8, and, with --policy-from, the best policy of
a finished search (its trials.json). The KV cache (a few MB at these lengths) is not counted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from _candidates import build, slug  # benchmarks/ is on sys.path when a script in it runs

from autoslm.quiet import quiet_libraries

CANDIDATES: list[tuple[str, list[dict]]] = [
    ("fp32 baseline", []),
    ("bf16", [{"technique": "cast.dtype", "params": {"dtype": "bfloat16"}}]),
    ("dynamic int8", [{"technique": "quant.dynamic_int8", "params": {"smooth_alpha": 0.5}}]),
    ("weight-only int8", [{"technique": "quant.weight_only", "params": {"bits": 8, "group_size": 128}}]),
]


def bandwidth_gbs(threads: int, gib: float = 1.0, repeats: int = 10) -> dict[str, float]:
    """Copy and read bandwidth in GB/s (1e9 bytes), medians over `repeats` after two warm-up runs."""
    import torch

    torch.set_num_threads(threads)
    n = int(gib * 2**30) // 4
    src = torch.ones(n, dtype=torch.float32)
    dst = torch.empty_like(src)
    copy, read = [], []
    for i in range(repeats + 2):
        t0 = time.perf_counter()
        dst.copy_(src)
        t1 = time.perf_counter()
        float(src.sum())
        t2 = time.perf_counter()
        if i >= 2:
            copy.append(2 * n * 4 / (t1 - t0) / 1e9)
            read.append(n * 4 / (t2 - t1) / 1e9)
    return {"copy": statistics.median(copy), "read": statistics.median(read)}


def weight_bytes_per_token(directory: Path) -> tuple[float, dict[str, float]]:
    """Bytes of weights one decode step reads, after one forward pass (lazily built weights exist then)."""
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    from autoslm import checkpoint

    model, tokenizer = checkpoint.load_dir(directory)
    model.eval()
    with torch.inference_mode():
        model(input_ids=torch.tensor([tokenizer("Hello there").input_ids]))
    seen: set[int] = set()
    by_kind: dict[str, float] = {}

    def add(kind: str, t: torch.Tensor | None, shared: bool = True) -> None:
        if t is None or not isinstance(t, torch.Tensor) or (shared and t.data_ptr() in seen):
            return
        if shared:  # a tied lm_head/embedding is one tensor: count it once
            seen.add(t.data_ptr())
        by_kind[kind] = by_kind.get(kind, 0.0) + t.numel() * t.element_size()

    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            continue  # one row per token; a tied lm_head counts the matrix below
        if isinstance(module, DynamicLinear):  # torch dynamic int8 Linear: int8 weight, fp32 bias
            add("int8 linear", module.weight(), shared=False)  # unpacked copies: data_ptr says nothing
            add("bias/norm", module.bias(), shared=False)
            continue
        if list(module.children()):
            continue
        w = getattr(module, "weight", None)
        add(f"{w.dtype}".replace("torch.", "") if isinstance(w, torch.Tensor) else "other", w)
        add("bias/norm", getattr(module, "bias", None))
    return sum(by_kind.values()), by_kind


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--policy-from", type=Path, help="a search's run directory: add its best policy")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="as MeasureSettings.threads")
    ap.add_argument("--gib", type=float, default=1.0, help="size of each bandwidth buffer")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-candidates"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    quiet_libraries()
    from autoslm.search_view import policy_text
    from autoslm.targets import MeasureSettings, get_target

    candidates = list(CANDIDATES)
    if args.policy_from:
        rows = json.loads((args.policy_from / "trials.json").read_text())
        feasible = [r for r in rows if r["feasible"] and r["quality"]]
        if feasible:
            best = min(feasible, key=lambda r: r["ppl"])
            candidates.append((f"best of {args.policy_from.name}", best["steps"]))
            print(f"best policy of {args.policy_from}: {policy_text(best['steps'])}", flush=True)
        else:
            print(f"{args.policy_from} has no feasible policy: nothing added", flush=True)

    bw = bandwidth_gbs(args.threads, args.gib)
    print(
        f"bandwidth ({args.threads} threads, {args.gib:g} GiB): copy {bw['copy']:.1f} GB/s, read {bw['read']:.1f} GB/s"
    )
    target = get_target("local")
    settings = MeasureSettings(threads=args.threads)
    dirs, weights = {}, {}
    for name, steps in candidates:
        dirs[name], _ = build(args.model, steps, args.out / slug(args.model, name))
        weights[name] = weight_bytes_per_token(dirs[name])
        kinds = ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in weights[name][1].items())
        print(f"{name}: {weights[name][0] / 1e6:.1f} MB of weights read per token ({kinds})", flush=True)
    decode: dict[str, list[float]] = {n: [] for n, _ in candidates}
    for r in range(args.rounds):
        order = candidates[r % len(candidates) :] + candidates[: r % len(candidates)]
        for name, _ in order:
            decode[name].append(target.measure(dirs[name], settings).decode_ms)
            print(f"round {r + 1} {name:<22} decode {decode[name][-1]:7.2f} ms", flush=True)
    bw_after = bandwidth_gbs(args.threads, args.gib)
    print(f"bandwidth again after the measurements: copy {bw_after['copy']:.1f} GB/s, read {bw_after['read']:.1f} GB/s")

    copy_bw = statistics.median([bw["copy"], bw_after["copy"]])
    read_bw = statistics.median([bw["read"], bw_after["read"]])
    fp = target.fingerprint()
    print(f"\n{args.model}; device {fp['id']} ({fp['cpu']}, {fp['cores']} cores, {args.threads} threads); "
          f"bandwidth copy {copy_bw:.1f} GB/s, read {read_bw:.1f} GB/s (mean of before/after)")  # fmt: skip
    print(f"{'candidate':<22} {'MB/token':>9} {'decode ms':>10} {'tok/s':>7} {'bound (copy)':>13} "
          f"{'of bound':>9} {'bound (read)':>13} {'of bound':>9}")  # fmt: skip
    rows = []
    for name, steps in candidates:
        mb = weights[name][0] / 1e6
        ms = statistics.median(decode[name])
        tps = 1000 / ms
        bound_copy, bound_read = copy_bw * 1e3 / mb, read_bw * 1e3 / mb
        rows.append({"candidate": name, "steps": steps, "mb_per_token": mb, "decode_ms": decode[name],
                     "tok_s": tps, "bound_copy": bound_copy, "bound_read": bound_read})  # fmt: skip
        print(f"{name:<22} {mb:9.1f} {ms:10.2f} {tps:7.2f} {bound_copy:11.1f}/s {100 * tps / bound_copy:8.0f}% "
              f"{bound_read:11.1f}/s {100 * tps / bound_read:8.0f}%")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"target": fp, "bandwidth": [bw, bw_after], "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
