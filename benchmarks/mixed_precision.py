"""autoslm's per-tensor mixed precision (quant.mixed) against llama.cpp's uniform presets, on this machine.

    python benchmarks/mixed_precision.py [--model smollm2-135m] [--trials 30] [--timeout 1200] [--json out.json]

Three searches in the `mixed-precision` space (quant.mixed alone: base type, share raised / lowered by measured
sensitivity, embedding type, importance matrix), full fidelity, seed 0:
  (a) size_mb<=Q4_K_M   the budget names the preset: the search builds and measures Q4_K_M (with an importance
                        matrix, quant.gguf's preset) first, on this machine, and takes its file size as the limit
  (b) size_mb<=Q3_K_M   the same against Q3_K_M
  (B) size_mb<=Q3_K_M,decode_ms<=Q3_K_M   as (b), and no slower than Q3_K_M (`--only aBc` runs it)
  (c) bpw<=4.5          bits per weight; afterwards the uniform types near that size (Q4_0, IQ4_NL, Q4_K_S, each
                        with an importance matrix and the embedding at Q4_0 too: "at that size") are measured in the
                        same run directory for the table
Each winner is compared with its preset(s): perplexity and KLD on the same held-out windows (KLD to the same F32
reference), size, bpw, and decode time paired in one process (8 alternating rounds, the close-call machinery).
Plain Q4_K_M / Q3_K_M (no importance matrix: llama.cpp's default) are scored too. The sensitivity table is measured
by the first search and reused by the others (same weights, same process): its cost is printed.
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

SEARCHES = {
    "a": ("size_mb<=Q4_K_M", ["Q4_K_M"]),
    "b": ("size_mb<=Q3_K_M", ["Q3_K_M"]),
    # size alone picked a mix 1.16x slower than Q3_K_M (Q5_1 tensors); naming decode too asks for "no slower"
    "B": ("size_mb<=Q3_K_M,decode_ms<=Q3_K_M", ["Q3_K_M"]),
    "c": ("bpw<=4.5", []),
}
# at bpw<=4.5 the uniform types with their embedding at 4.5 bits too (llama.cpp's own choice for SmolLM2's tied
# embedding is Q8_0: 5.35 bpw for "Q4_0"); Q4_K_S's 576-value rows fall back to Q5_0, so it stays above 4.5
UNIFORM_C = {
    "Q4_0+imatrix, embedding Q4_0": {"type": "Q4_0", "token_embd_type": "Q4_0", "imatrix": True},
    "IQ4_NL+imatrix, embedding Q4_0": {"type": "IQ4_NL", "token_embd_type": "Q4_0", "imatrix": True},
    "Q4_K_S+imatrix, embedding Q4_0": {"type": "Q4_K_S", "token_embd_type": "Q4_0", "imatrix": True},
    "Q4_0+imatrix": {"type": "Q4_0", "imatrix": True},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds per search")
    ap.add_argument("--only", default="abc", help="which searches to run (letters of a, b, c)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--work", type=Path, help="work folder (default: a new one); a search found there resumes")
    args = ap.parse_args()
    quiet_libraries()
    import autoslm
    from autoslm.searching.budget import Budget
    from autoslm.searching.objective import Objective
    from autoslm.targets import MeasureSettings, get_target

    print(f"load average at start: {os.getloadavg()[0]:.2f} (nothing else was started by this script)", flush=True)
    target, settings = get_target("local"), MeasureSettings(runtime="llama.cpp")
    work = args.work or Path(tempfile.mkdtemp(prefix="autoslm-mixed-"))
    summary: dict[str, Any] = {}
    for key in args.only:
        budget, plain = SEARCHES[key]
        run_dir = work / f"search-{key}"
        t0 = time.perf_counter()
        resumed = (run_dir / "study.db").is_file()
        result = autoslm.search(model=args.model, runtime="llama.cpp", space="mixed-precision", budget=budget,
                                trials=args.trials, out=str(run_dir), timeout_s=args.timeout, fidelity="full",
                                seed=0, resume=resumed)  # fmt: skip
        minutes = (time.perf_counter() - t0) / 60
        span = _trials_span(run_dir)  # first trial's start to last trial's end (sensitivity included)
        if resumed:
            print(f"(search ({key}) resumed from {run_dir}: its trials ran {span:.1f} min before)", flush=True)
            minutes = span
        done = [r for r in result.trials if r.counted]
        evaluated = [r for r in done if r.cached_from is None]
        feasible = [r for r in done if r.status == "complete" and r.feasible]
        tables = sorted((run_dir / "sensitivity").glob("*.json"))
        sens = json.loads(tables[0].read_text()) if tables else None
        row: dict[str, Any] = {
            "budget": budget,
            "trials": len(done),
            "feasible": len(feasible),
            "minutes": round(minutes, 2),
            "trials_minutes": round(span, 2),
            "median_trial_s": statistics.median(sum(r.seconds.values()) for r in evaluated) if evaluated else None,
            "sensitivity_s": sens["seconds"] if sens else None,
            "sensitivity_tensors": len(sens["kld"]) if sens else None,
        }
        cost = f"measured in {row['sensitivity_s']} s (a table measured earlier in this process is reused)"
        print(f"\nsearch ({key}) {budget}: {len(done)} trials ({len(feasible)} within budget) in {minutes:.1f} min "
              f"({span:.1f} min from the first trial's start to the last one's end), median trial "
              f"{row['median_trial_s']:.1f} s; sensitivity table ({row['sensitivity_tensors']} tensors) {cost}",
              flush=True)  # fmt: skip
        baseline = result.baseline
        objective = Objective(model=args.model, space=None, budget=Budget(), run_dir=str(run_dir), seed=0,
                              runtime="llama.cpp")  # type: ignore[arg-type]  # fmt: skip
        objective.fidelity_full = _full()
        candidates: dict[str, dict[str, Any]] = {}
        for name, ref in (baseline.get("references") or {}).items():
            candidates[f"preset {name} (+imatrix)"] = _row(ref, run_dir / "references" / name)
        extra = {f"{p} (no imatrix)": {"type": p} for p in plain} | (UNIFORM_C if key == "c" else {})
        for i, (name, params) in enumerate(extra.items()):
            out = objective.evaluate_policy([{"technique": "quant.gguf", "params": params}], baseline,
                                            trial_number=9900 - i, judge=False)  # fmt: skip
            candidates[f"preset {name}"] = _row(vars(out), Path(out.checkpoint or ""))
        if result.best is not None:
            from autoslm.search_view import policy_text

            best = _row(result.best.model_dump(), result.checkpoint_path)
            best["policy"] = policy_text(result.best.steps)
            candidates["autoslm mix"] = best
            for name, cand in candidates.items():
                if name == "autoslm mix":
                    continue
                pm = target.measure_pair(best["dir"], cand["dir"], rounds=8, settings=settings)
                cand["mix_decode_ratio"] = pm.ratios["decode_ms"]
                cand["mix_decode_rounds"] = pm.pair_ratios["decode_ms"]
        print(f"{'':<34}{'size MB':>9}{'bpw':>7}{'ppl':>10}{'KLD':>9}{'mix decode / this':>19}")
        for name, cand in candidates.items():
            ratio = cand.get("mix_decode_ratio")
            spread = sorted(cand.get("mix_decode_rounds") or [0])
            print(f"{name:<34}{cand['size_mb']:>9.2f}{cand['bpw']:>7.3f}{cand['ppl']:>10.3f}{cand['kld']:>9.4f}"
                  + (f"{ratio:>9.3f}x ({spread[0]:.2f}-{spread[-1]:.2f})" if ratio else ""), flush=True)  # fmt: skip
        if "autoslm mix" in candidates:
            print(f"autoslm mix: {candidates['autoslm mix']['policy']}")
        row["rows"] = {k: {x: y for x, y in v.items() if x != "dir"} for k, v in candidates.items()}
        summary[key] = row
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}; work folder {work}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str))


def _trials_span(run_dir: Path) -> float:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    trials = optuna.load_study(study_name="autoslm", storage=f"sqlite:///{run_dir / 'study.db'}").trials
    done = [t for t in trials if t.datetime_complete]
    if not done:
        return 0.0
    return (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds() / 60


def _full() -> Any:
    from autoslm.evaluate import Fidelity

    return Fidelity.preset("full")


def _row(record: dict[str, Any], directory: Path | None) -> dict[str, Any]:
    m = record["metrics"]
    kld = (record.get("quality") or {}).get("kld_mean", float("nan"))
    return {"dir": directory, "size_mb": m["size_mb"], "bpw": m.get("bpw", float("nan")), "ppl": record["ppl"],
            "kld": kld, "decode_ms": m["decode_ms"]}  # fmt: skip


if __name__ == "__main__":
    main()
