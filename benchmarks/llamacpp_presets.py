"""autoslm's llama.cpp search against llama.cpp's own presets, on this machine, at two budgets.

    python benchmarks/llamacpp_presets.py [--model smollm2-135m] [--trials 30] [--timeout 780] [--json out.json]
    python benchmarks/llamacpp_presets.py --reuse WORKDIR --from out.json   # measure a previous run's files again

1. The presets (F32 export, Q8_0, Q6_K, Q4_K_M, Q4_0, IQ4_NL, Q3_K_M) are built, measured twice in fresh processes
   (interleaved) and scored at full fidelity in llama.cpp (perplexity, KLD to the F32 export).
2. Budget (a): file size <= the Q4_K_M file's size (absolute, from step 1). Budget (b): decode time <= 0.6x Q8_0's,
   written relative to the F32 baseline with the Q8_0/F32 ratio measured in step 1. One autoslm search each
   (space `llamacpp`, `--trials`, stopped after `--timeout` seconds).
3. Each search's best is measured again beside the presets (three more interleaved rounds) so the decode comparison
   is made in one run. Printed: policy, size, decode ms, ppl, KLD. Then each best is timed against the preset of
   its budget (Q4_K_M for (a), Q8_0 for (b)) with both models in one process, alternating for 8 rounds: the decode
   ratio a close call would be judged on.
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

PRESETS = ("Q8_0", "Q6_K", "Q4_K_M", "Q4_0", "IQ4_NL", "Q3_K_M")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--timeout", type=float, default=780.0, help="seconds per search")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--reuse", type=Path, help="a previous run's work folder: skip building and searching")
    ap.add_argument("--from", dest="previous", type=Path, help="with --reuse: that run's --json (policies, quality)")
    args = ap.parse_args()
    if args.reuse:
        return remeasure(args)
    quiet_libraries()
    import autoslm
    from autoslm.evaluate import Fidelity
    from autoslm.models import load_model
    from autoslm.pipeline import Step, plan
    from autoslm.runtimes import get_runtime
    from autoslm.targets import MeasureSettings, get_target

    print(f"load average at start: {os.getloadavg()[0]:.2f} (nothing else was started by this script)", flush=True)
    rt, target, settings = get_runtime("llama.cpp"), get_target("local"), MeasureSettings(runtime="llama.cpp")
    work = Path(tempfile.mkdtemp(prefix="autoslm-presets-"))
    lm = load_model(args.model)
    full = Fidelity.preset("full")
    rows: dict[str, dict] = {}
    reference = None
    for name in ("F32", *PRESETS):
        t0 = time.perf_counter()
        planned = plan([Step(technique="quant.gguf", params={"type": name})]) if name != "F32" else []
        directory = rt.save(lm.model, lm.tokenizer, work / name, planned)
        q = rt.evaluate(
            None, lm.tokenizer, directory, full, reference=reference, keep_topk=64 if reference is None else 0
        )
        reference = reference or q.reference
        rows[name] = {"policy": f"preset {name}", "dir": directory, "ppl": q.ppl, "kld": q.kld_mean, "decode": []}
        print(f"built {name:<7} ppl {q.ppl:7.3f}  ({time.perf_counter() - t0:.0f}s)", flush=True)

    def measure_all(rounds: int) -> None:
        items = list(rows.values())
        for r in range(rounds):
            for row in items if r % 2 == 0 else reversed(items):
                m = target.measure(row["dir"], settings)
                row["decode"].append(m.decode_ms)
                row["size_mb"] = m.size_mb

    measure_all(2)
    med = {k: statistics.median(v["decode"]) for k, v in rows.items()}
    size_limit = rows["Q4_K_M"]["size_mb"]
    factor = 0.6 * med["Q8_0"] / med["F32"]
    budgets = {"a": f"size_mb<={size_limit:.2f}", "b": f"decode_ms<={factor:.3f}x"}
    print(f"budget (a) {budgets['a']} (the Q4_K_M file); budget (b) {budgets['b']} (0.6x Q8_0's decode)", flush=True)
    searches = {}
    for key, budget in budgets.items():
        t0 = time.perf_counter()
        result = autoslm.search(model=args.model, runtime="llama.cpp", space="llamacpp", budget=budget,
                                trials=args.trials, out=str(work / f"search-{key}"), timeout_s=args.timeout,
                                fidelity="full", seed=0)  # fmt: skip
        minutes = (time.perf_counter() - t0) / 60
        done = [r for r in result.trials if r.counted]
        evaluated = [r for r in done if r.cached_from is None]
        seconds = [sum(r.seconds.values()) for r in evaluated]
        no_kd = [sum(r.seconds.values()) for r in evaluated if not any(s["technique"] == "distill.kd" for s in r.steps)]
        feasible = [r for r in done if r.status == "complete" and r.feasible]
        searches[key] = {"budget": budget, "trials": len(done), "feasible": len(feasible), "minutes": minutes,
                         "median_trial_s": statistics.median(seconds) if seconds else None,
                         "median_trial_no_kd_s": statistics.median(no_kd) if no_kd else None}  # fmt: skip
        print(f"search ({key}) {budget}: {len(done)} trials ({len(feasible)} within budget) in {minutes:.1f} min; "
              f"median trial {searches[key]['median_trial_s']:.1f} s, without distillation "
              f"{searches[key]['median_trial_no_kd_s']:.1f} s ({len(no_kd)} trials)", flush=True)  # fmt: skip
        if result.best is not None:
            from autoslm.search_view import policy_text

            rows[f"autoslm ({key})"] = {
                "policy": f"autoslm ({key}): {policy_text(result.best.steps)}",
                "dir": result.checkpoint_path,
                "ppl": result.best.ppl,
                "kld": (result.best.quality or {}).get("kld_mean"),
                "decode": [],
            }
    final(rows, target, settings, args.json, {"searches": searches, "budgets": budgets})


def final(rows: dict[str, dict], target: Any, settings: Any, out: Path | None, summary: dict[str, Any]) -> None:
    """Every checkpoint measured three more times side by side (interleaved), the table, then each search's best
    paired with the preset of its budget in one process."""
    items = list(rows.values())
    for row in items:
        row["decode"] = []
    for r in range(3):
        for row in items if r % 2 == 0 else reversed(items):
            m = target.measure(row["dir"], settings)
            row["decode"].append(m.decode_ms)
            row["size_mb"] = m.size_mb
    print(f"\n{'policy':<72}{'size MB':>9}{'decode ms':>11}{'ppl':>9}{'KLD':>9}")
    for row in rows.values():
        kld = "-" if row["kld"] is None else f"{row['kld']:.4f}"
        print(f"{row['policy'][:71]:<72}{row['size_mb']:>9.1f}{statistics.median(row['decode']):>11.2f}"
              f"{row['ppl']:>9.3f}{kld:>9}")  # fmt: skip
    # the decode verdict against the preset at each budget, paired: both models in one process, timed alternately
    pairs = {}
    for key, ref in {"a": "Q4_K_M", "b": "Q8_0"}.items():
        name = f"autoslm ({key})"
        if name in rows:
            pm = target.measure_pair(rows[name]["dir"], rows[ref]["dir"], rounds=8, settings=settings)
            pairs[key] = {"reference": ref, "decode_ratio": pm.ratios["decode_ms"],
                          "rounds": pm.pair_ratios["decode_ms"]}  # fmt: skip
            spread = sorted(pm.pair_ratios["decode_ms"])
            print(f"paired, 8 rounds in one process: autoslm ({key}) decodes at {pm.ratios['decode_ms']:.3f}x {ref}'s "
                  f"time (rounds {spread[0]:.3f}..{spread[-1]:.3f})")  # fmt: skip
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
    if out:
        rows_out = {k: {x: y for x, y in v.items() if x != "dir"} for k, v in rows.items()}
        out.write_text(json.dumps({"rows": rows_out, **summary, "pairs": pairs}, indent=2))


def remeasure(args: argparse.Namespace) -> None:
    """--reuse: the presets and the searches' winners of a previous run (its work folder and --json), measured
    again as the end of a run does."""
    from autoslm.targets import MeasureSettings, get_target

    print(f"load average at start: {os.getloadavg()[0]:.2f} (re-measuring {args.reuse})", flush=True)
    previous = json.loads(args.previous.read_text())
    rows = {}
    for name, row in previous["rows"].items():
        key = name.removeprefix("autoslm (").removesuffix(")")
        directory = args.reuse / (f"search-{key}" / Path("checkpoint") if name.startswith("autoslm") else Path(name))
        rows[name] = {**row, "dir": directory}
    summary = {k: previous[k] for k in ("searches", "budgets") if k in previous}
    final(rows, get_target("local"), MeasureSettings(runtime="llama.cpp"), args.json, summary)


if __name__ == "__main__":
    main()
