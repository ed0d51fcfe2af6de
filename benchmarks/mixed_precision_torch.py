"""quant.mixed_torch on the torch runtime: does the sensitivity table choose the right layers to keep precise?

    python benchmarks/mixed_precision_torch.py [--model smollm2-135m] [--share 0.15] [--families int8,w4]
                                               [--json out.json]

In one process, through the search's own objective (apply, save, measure in a fresh process, evaluate at full
fidelity; KLD against the fp32 model's distribution on the same windows):
  fp32                       the baseline
  int8 everywhere            every block Linear dynamic int8 (torch.ao, per channel)
  int8, top SHARE fp32       the most sensitive SHARE of the block weights (by the w4 probe) kept fp32
  int8, bottom SHARE fp32    the same share, least sensitive first: the control (same size, other layers)
  w4 everywhere              every block Linear int4 weights (neural-compressor RTN, groups of 32)
  w4, top SHARE w8           the most sensitive share at int8 weights
  w4, bottom SHARE w8        the control
Decode is timed beside the int8 (or w4) uniform setting in one process (8 alternating rounds): what the mix costs.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from autoslm.quiet import quiet_libraries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--share", type=float, default=0.15)
    ap.add_argument("--families", default="int8,w4", help="which uniform precisions to start from")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    quiet_libraries()
    from autoslm_plugins.quant_mixed_torch import MixedTorchConfig, assign

    from autoslm import sensitivity
    from autoslm.searching.budget import Budget
    from autoslm.searching.objective import Objective
    from autoslm.targets import MeasureSettings, get_target

    print(f"load average at start: {os.getloadavg()[0]:.2f} (nothing else was started by this script)", flush=True)
    run = Path(tempfile.mkdtemp(prefix="autoslm-mixed-torch-"))
    objective = Objective(model=args.model, space=None, budget=Budget(), run_dir=str(run), seed=0)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    baseline = objective.evaluate_policy([], None, trial_number=0)
    base = {"metrics": baseline.metrics, "low_ppl": baseline.low_ppl, "ppl": baseline.ppl}
    print(f"baseline fp32: ppl {baseline.ppl:.3f}, decode {baseline.metrics['decode_ms']:.1f} ms "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip

    def step(**params: Any) -> list[dict[str, Any]]:
        return [{"technique": "quant.mixed_torch", "params": params}]

    rows: dict[str, dict[str, Any]] = {"fp32": _row(vars(baseline))}
    number = 1
    table = None
    families = [(b, u) for b, u in (("int8", "fp32"), ("w4", "w8")) if b in args.families.split(",")]
    for base_type, up in families:
        settings = {f"{base_type} everywhere": step(base=base_type),
                    f"{base_type}, top {args.share:.0%} {up}": step(base=base_type, raise_fraction=args.share,
                                                                    raise_type=up)}  # fmt: skip
        for name, steps in settings.items():
            t0 = time.perf_counter()
            out = objective.evaluate_policy(steps, base, trial_number=number, judge=False)
            number += 1
            rows[name] = _row(vars(out)) | {"seconds": round(time.perf_counter() - t0, 1), "dir": out.checkpoint}
            print(f"{name}: {rows[name]} ({out.reason or 'ok'})", flush=True)
        if table is None:
            (path,) = (run / "sensitivity").glob("*.json")
            table = sensitivity.SensitivityTable.load(path)
            print(f"sensitivity table: {len(table.kld)} Linears at {table.probe} in {table.seconds} s", flush=True)
        # the control: the same share, least sensitive first (the table with its order reversed)
        flipped = sensitivity.SensitivityTable(probe=table.probe, tokens=table.tokens, seconds=0.0,
                                               fingerprint=table.fingerprint,
                                               kld={n: 1.0 / max(v, 1e-12) for n, v in table.kld.items()},
                                               numel=table.numel)  # fmt: skip
        layers = assign(flipped, MixedTorchConfig(base=base_type, raise_fraction=args.share, raise_type=up))
        name = f"{base_type}, bottom {args.share:.0%} {up}"
        out = objective.evaluate_policy(step(base=base_type, layers=layers), base, trial_number=number, judge=False)
        number += 1
        rows[name] = _row(vars(out)) | {"dir": out.checkpoint}
        print(f"{name}: {rows[name]} ({out.reason or 'ok'})", flush=True)
    target, measure = get_target("local"), MeasureSettings()
    for name, row in rows.items():
        uniform = rows.get(f"{name.split(',')[0].split(' ')[0]} everywhere")
        if row.get("dir") and uniform and uniform is not row:
            pair = target.measure_pair(Path(row["dir"]), Path(uniform["dir"]), rounds=8, settings=measure)
            row["decode_vs_uniform"] = round(pair.ratios["decode_ms"], 3)
    print(f"\n{'':<24}{'size MB':>9}{'ppl':>10}{'KLD':>9}{'decode ms':>11}{'vs uniform (paired)':>21}")
    for name, row in rows.items():
        ratio = row.get("decode_vs_uniform")
        print(f"{name:<24}{row['size_mb']:>9.1f}{row['ppl']:>10.3f}{row['kld']:>9.4f}{row['decode_ms']:>11.1f}"
              + (f"{ratio:>20.3f}x" if ratio else ""))  # fmt: skip
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}; run folder {run}")
    if args.json:
        args.json.write_text(json.dumps({k: {x: y for x, y in v.items() if x != "dir"} for k, v in rows.items()},
                                        indent=2))  # fmt: skip


def _row(record: dict[str, Any]) -> dict[str, Any]:
    m = record["metrics"] or {}
    kld = (record.get("quality") or {}).get("kld_mean")
    return {"size_mb": m.get("size_mb", float("nan")), "ppl": record["ppl"] or float("nan"),
            "kld": kld if kld is not None else 0.0, "decode_ms": m.get("decode_ms", float("nan"))}  # fmt: skip


if __name__ == "__main__":
    main()
