"""Close-call rechecks: which way of timing a candidate again gives budget verdicts that hold?

    python benchmarks/recheck.py [--model smollm2-135m] [--rounds 5] [--out runs/bench-recheck] [--json FILE]

A search measures the baseline once, first, then each candidate once; the verdict is "candidate decode ms <= limit x
that baseline". For a close call it now times the candidate again beside the baseline (`Target.measure_pair`).
This script replays one real candidate (dynamic int8, SmolLM2's usual close call at a 0.6x budget) `--rounds`
times, each round as a search would meet it later in its run, and estimates its decode ratio four ways:

  single          one measurement / the baseline measured once at the start (all a search did before)
  fresh pairs x2  2 back-to-back pairs of fresh-process measurements, median ratio (`Target.measure_pair`, what a
                  remote target does)
  one process x2  both models in one fresh process, timed alternately, first 2 rounds (`LocalTarget.measure_pair`)
  one process x4  the same, 4 rounds (the search's default --recheck-rounds)

Every fresh-process measurement uses the default MeasureSettings, as a search does. The reference ratio is the
median of all the candidate's fresh-process decode ms over the median of all the baseline's, pooled over the whole
run: what a deployed process of each would see. Prints each estimator's spread and bias around it, and how often
its verdict agrees with the reference verdict for limits 5% and 10% either side of the reference ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from _candidates import build, slug  # benchmarks/ is on sys.path when a script in it runs

from autoslm.quiet import quiet_libraries

CANDIDATE = ("dynamic int8", [{"technique": "quant.dynamic_int8", "params": {"smooth_alpha": 0.5}}])
OFFSETS = (-0.10, -0.05, 0.05, 0.10)
ESTIMATORS = ("single", "fresh pairs x2", "one process x2", "one process x4")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-recheck"))
    ap.add_argument("--candidates", type=Path, default=Path("runs/bench-candidates"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    quiet_libraries()
    from autoslm.searching.objective import Objective
    from autoslm.targets import PairMeasurement, get_target

    name, steps = CANDIDATE
    cand_dir, _ = build(args.model, steps, args.candidates / slug(args.model, name))
    objective = Objective(model=args.model, space=None, budget=None, run_dir=str(args.out))  # type: ignore[arg-type]
    base_dir = objective.baseline_checkpoint()  # the unmodified model, saved as a search saves it
    target = get_target("local")
    t_start = time.perf_counter()
    stored = target.measure(base_dir).metrics()["decode_ms"]  # a search's baseline: measured once, first
    fresh = {"baseline": [stored], "candidate": []}
    print(f"stored baseline: decode {stored:.2f} ms", flush=True)
    rounds = []
    for r in range(args.rounds):
        row: dict = {"minute": (time.perf_counter() - t_start) / 60}
        single = target.measure(cand_dir).metrics()["decode_ms"]
        fresh["candidate"].append(single)
        row["single"] = single / stored
        t0 = time.perf_counter()
        base_m, cand_m = [], []
        for _ in range(2):  # what the default Target.measure_pair does, keeping every raw figure for the reference
            base_m.append(target.measure(base_dir).metrics())
            cand_m.append(target.measure(cand_dir).metrics())
        pairs = PairMeasurement.from_rounds(base_m, cand_m, how="fresh processes")
        fresh["baseline"] += [m["decode_ms"] for m in base_m]
        fresh["candidate"] += [m["decode_ms"] for m in cand_m]
        row["fresh_s"] = time.perf_counter() - t0
        row["fresh_pairs"] = pairs.pair_ratios["decode_ms"]
        row["fresh pairs x2"] = pairs.ratios["decode_ms"]
        t0 = time.perf_counter()
        inproc = target.measure_pair(cand_dir, base_dir, 4)
        row["one_process_s"] = time.perf_counter() - t0
        row["one_process_pairs"] = inproc.pair_ratios["decode_ms"]
        row["one process x2"] = statistics.median(inproc.pair_ratios["decode_ms"][:2])
        row["one process x4"] = inproc.ratios["decode_ms"]
        row["one_process_baseline_ms"] = inproc.baseline["decode_ms"]
        rounds.append(row)
        print(f"round {r + 1} ({row['minute']:4.1f} min): single {row['single']:.3f}x | fresh pairs "
              f"{', '.join(f'{x:.3f}' for x in row['fresh_pairs'])} ({row['fresh_s']:.0f} s) | one process "
              f"{', '.join(f'{x:.3f}' for x in row['one_process_pairs'])} ({row['one_process_s']:.0f} s, baseline "
              f"{row['one_process_baseline_ms']:.1f} ms)", flush=True)  # fmt: skip
    minutes = (time.perf_counter() - t_start) / 60
    reference = statistics.median(fresh["candidate"]) / statistics.median(fresh["baseline"])
    fp = target.fingerprint()
    print(f"\n{args.model}, candidate {name}; {args.rounds} rounds ({minutes:.1f} min); device {fp['id']} "
          f"({fp['cpu']}, {fp['cores']} cores)")  # fmt: skip
    print(f"reference ratio: median of the candidate's {len(fresh['candidate'])} fresh-process decode ms "
          f"{statistics.median(fresh['candidate']):.2f} / the baseline's {len(fresh['baseline'])} "
          f"{statistics.median(fresh['baseline']):.2f} = {reference:.3f}x")  # fmt: skip
    limits = [reference * (1 + o) for o in OFFSETS]
    header = "".join(f"{f'{o:+.0%}':>6}" for o in OFFSETS)
    print(f"{'estimator':<15} {'median':>7} {'bias':>6} {'stdev':>6} {'max|err|':>8} {'s/verdict':>9}   "
          f"agrees with the reference at limit{header}")  # fmt: skip
    cost = {"single": [0.0], "fresh pairs x2": [r["fresh_s"] for r in rounds],
            "one process x2": [r["one_process_s"] / 2 for r in rounds],
            "one process x4": [r["one_process_s"] for r in rounds]}  # fmt: skip
    summary = {}
    for est in ESTIMATORS:
        values = [r[est] for r in rounds]
        agree = [sum((v <= lim) == (reference <= lim) for v in values) for lim in limits]
        summary[est] = {
            "median": statistics.median(values),
            "bias": statistics.median(values) / reference - 1,
            "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
            "max_abs_err": max(abs(v / reference - 1) for v in values),
            "extra_s": statistics.median(cost[est]),
            "agree": dict(zip([f"{o:+.2f}" for o in OFFSETS], agree, strict=True)),
        }
        e = summary[est]
        cells = "".join(f"{f'{a}/{len(values)}':>6}" for a in agree)
        print(f"{est:<15} {e['median']:>6.3f}x {e['bias']:>+6.1%} {e['stdev']:>6.3f} {e['max_abs_err']:>8.1%} "
              f"{e['extra_s']:>8.0f}s   {'':<34}{cells}")  # fmt: skip
    print("s/verdict: seconds of re-measurement beyond the single measurement (one process x2: half the x4 run)")
    if args.json:
        args.json.write_text(json.dumps({"target": fp, "model": args.model, "candidate": name, "minutes": minutes,
                                         "stored_baseline": stored, "reference": reference, "rounds": rounds,
                                         "summary": summary}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
