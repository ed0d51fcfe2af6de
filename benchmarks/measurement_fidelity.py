"""Measurement fidelity: how repeatable is one measurement, and are rankings between candidates stable?

    python benchmarks/measurement_fidelity.py [--model smollm2-135m] [--rounds 5] [--budget 0.7]
                                              [--out runs/bench-candidates] [--json FILE]

Builds five checkpoints (the baseline, bf16, dynamic int8, weight-only int8, depth -4 blocks; kept in --out and
reused by later runs), then measures every one of them `--rounds` times, each time in a fresh process exactly as a
search does (the default MeasureSettings: 2 threads, 1 warm-up, 3 timed runs of 32 tokens). The order rotates each
round, so drift of the machine spreads over all candidates. Prints per candidate the coefficient of variation
(CV = stdev / mean) of decode ms, prefill ms and memory; for every pair how often a single round orders them as the
medians do; and how often a single round's verdict "decode <= budget x baseline (same round)" agrees with the
verdict from the medians.
"""

from __future__ import annotations

import argparse
import itertools
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
    ("depth -4 blocks", [{"technique": "prune.depth", "params": {"blocks": 4}}]),
]
METRICS = ("decode_ms", "prefill_ms", "memory_mb")


def cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.mean(values) if len(values) > 1 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--budget", type=float, default=0.7, help="budget as a fraction of the baseline's decode ms")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-candidates"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    quiet_libraries()
    from autoslm.targets import get_target

    target = get_target("local")
    dirs = {}
    for name, steps in CANDIDATES:
        try:
            dirs[name], seconds = build(args.model, steps, args.out / slug(args.model, name))
        except Exception as exc:  # e.g. a model too shallow for depth pruning: leave that candidate out
            print(f"skipped {name}: {exc}", flush=True)
            continue
        print(f"built {name} ({seconds:.0f} s)", flush=True)
    names = list(dirs)
    runs: dict[str, list] = {n: [] for n in names}
    t_start = time.perf_counter()
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            m = target.measure(dirs[name])
            runs[name].append(m)
            print(f"round {r + 1} {name:<18} decode {m.decode_ms:7.2f} ms  prefill {m.prefill_ms:7.1f} ms  "
                  f"memory {m.memory_mb:6.0f} MB", flush=True)  # fmt: skip
    minutes = (time.perf_counter() - t_start) / 60

    fp = target.fingerprint()
    print(f"\n{args.model}, {args.rounds} rounds x {len(names)} candidates, each measurement a fresh process "
          f"({minutes:.1f} min); device {fp['id']} ({fp['cpu']}, {fp['cores']} cores)")  # fmt: skip
    print(f"{'candidate':<18} {'decode ms (median)':>18} {'min-max':>15} {'CV decode':>10} {'CV prefill':>11} "
          f"{'CV memory':>10}")  # fmt: skip
    med = {n: statistics.median(m.decode_ms for m in runs[n]) for n in names}
    table = []
    for n in names:
        d = [m.decode_ms for m in runs[n]]
        row = {"candidate": n, "decode_median": med[n], "decode": d}
        row.update({f"cv_{k}": cv([getattr(m, k) for m in runs[n]]) for k in METRICS})
        table.append(row)
        print(f"{n:<18} {med[n]:18.2f} {min(d):7.1f}-{max(d):<7.1f} {100 * row['cv_decode_ms']:9.1f}% "
              f"{100 * row['cv_prefill_ms']:10.1f}% {100 * row['cv_memory_mb']:9.1f}%")  # fmt: skip

    print("\npairwise order of decode ms: fraction of rounds that order the pair as the medians do")
    pairs = []
    for a, b in itertools.combinations(names, 2):
        faster, slower = (a, b) if med[a] <= med[b] else (b, a)
        agree = sum(runs[faster][r].decode_ms <= runs[slower][r].decode_ms for r in range(args.rounds))
        pairs.append({"faster": faster, "slower": slower, "ratio": med[slower] / med[faster], "agree": agree})
    for p in sorted(pairs, key=lambda p: p["ratio"]):
        print(f"  {p['faster']:<18} < {p['slower']:<18} medians {p['ratio']:.2f}x apart   "
              f"{p['agree']}/{args.rounds} rounds agree")  # fmt: skip
    full = sum(
        sorted(names, key=lambda n: runs[n][r].decode_ms) == sorted(names, key=lambda n: med[n])
        for r in range(args.rounds)
    )
    print(f"whole ranking identical to the medians' in {full}/{args.rounds} rounds")

    base = names[0]
    print(f"\nbudget decode <= {args.budget:g}x baseline: single-round verdict (vs that round's baseline) "
          f"agrees with the medians' verdict")  # fmt: skip
    verdicts = []
    for n in names[1:]:
        ratio = med[n] / med[base]
        verdict = ratio <= args.budget
        agree = sum(
            (runs[n][r].decode_ms / runs[base][r].decode_ms <= args.budget) == verdict for r in range(args.rounds)
        )
        ratios = [runs[n][r].decode_ms / runs[base][r].decode_ms for r in range(args.rounds)]
        verdicts.append({"candidate": n, "ratio": ratio, "feasible": verdict, "agree": agree, "ratios": ratios})
        print(f"  {n:<18} {ratio:.2f}x ({'feasible' if verdict else 'over budget'})  {agree}/{args.rounds}   "
              f"per round {min(ratios):.2f}x-{max(ratios):.2f}x")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"target": fp, "candidates": table, "pairs": pairs, "budget": verdicts,
                                         "full_ranking_agree": full}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
