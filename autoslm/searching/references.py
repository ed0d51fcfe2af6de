"""References: named presets a budget is written against (`size_mb<=Q4_K_M`, `decode_ms<=0.9xQ8_0`).

A name is a technique's preset (`Technique.presets`) for the search's runtime: the exact key, or the key's part
before a `+` (`Q4_K_M` finds quant.gguf's `Q4_K_M+imatrix`: the suffix changes quality, not size or speed). Each
reference is built, measured on the target and evaluated at the start of the study, right after the baseline, so
the limit it sets comes from the same machine as the candidates it judges; stored with the baseline (`baseline.json`
-> `references`), shown in the report and plotted beside the trials; their checkpoints are kept in
RUN/references/NAME for side-by-side comparisons with the winner.
"""

from __future__ import annotations

from typing import Any

from autoslm.errors import UserError


def preset_steps(name: str, runtime: str) -> list[dict[str, Any]]:
    """The one-step policy that a preset name stands for, for techniques `runtime` accepts."""
    from autoslm.plugins import get_registry
    from autoslm.runtimes import get_runtime

    rt = get_runtime(runtime)
    exact, loose, known = [], [], []
    for entry in get_registry().techniques.values():
        cls = entry.cls
        if rt.refuses(cls) is not None:
            continue
        for key, params in cls.presets.items():
            known.append(key.split("+")[0])
            if key == name:
                exact.append((cls.name, params))
            elif key.split("+")[0] == name:
                loose.append((cls.name, params))
    found = (exact or loose)[:1]
    if not found:
        names = ", ".join(dict.fromkeys(known)) or "none"
        raise UserError(
            f"budget names preset '{name}', which no technique of the {runtime} runtime provides: use one of {names}"
        )
    technique, params = found[0]
    return [{"technique": technique, "params": dict(params)}]


def measure_references(objective: Any, baseline: dict[str, Any], names: tuple[str, ...], progress: Any = None) -> None:
    """Measure each named preset not yet in `baseline["references"]` (in place): its policy, metrics and quality."""
    import shutil

    refs = baseline.setdefault("references", {})
    for name in names:
        if name in refs:
            continue
        steps = preset_steps(name, objective.runtime)
        if progress is not None:
            progress("reference_start", {"name": name, "steps": steps})
        out = objective.evaluate_policy(steps, baseline, trial_number=f"reference-{name}", judge=False)
        if out.status != "complete":
            raise RuntimeError(f"preset {name} could not be measured: {out.reason}")
        keep = reference_checkpoint(objective.run_dir, name)  # kept: compare with the winner, time candidates beside
        shutil.rmtree(keep, ignore_errors=True)
        keep.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(out.checkpoint or "", keep)
        refs[name] = {"steps": out.steps, "metrics": out.metrics, "ppl": out.ppl, "low_ppl": out.low_ppl,
                      "quality": out.quality}  # fmt: skip


def reference_checkpoint(run_dir: Any, name: str) -> Any:
    """Where a study keeps the checkpoint of the preset `name`: RUN/references/NAME."""
    from autoslm.run_dir import RunDir

    return RunDir(run_dir).reference(name)


def reference_metrics(baseline: dict[str, Any] | None) -> dict[str, dict[str, float]]:
    """Preset name -> its measured metrics (what Budget.violations takes)."""
    return {name: r["metrics"] for name, r in ((baseline or {}).get("references") or {}).items()}


__all__ = ["measure_references", "preset_steps", "reference_checkpoint", "reference_metrics"]
