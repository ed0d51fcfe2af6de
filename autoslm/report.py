"""A search's report: `pareto.png` and a self-contained `report.html` (the picture is embedded; opens offline).

Read from the run's Optuna study, so it works for a finished search and for one still running (`autoslm report`).

The picture: held-out perplexity vs decode ms/token for every trial with quality (colour = peak memory MB),
over-budget trials (measured, no quality) on a strip at the top, the Pareto front, the budget line(s), the
baseline and the chosen policy. The page adds the per-trial table and which techniques the good policies used.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoslm.errors import UserError
from autoslm.metrics import columns
from autoslm.run_dir import RunDir
from autoslm.targets import DECODE_CONTEXT

if TYPE_CHECKING:
    from autoslm.searching.trials import TrialRecord


def load_run(run_dir: Path, storage: str | None = None, study_name: str | None = None) -> dict[str, Any]:
    """Settings, baseline and trial rows of a run directory's study (works while the search runs)."""
    import optuna

    from autoslm.errors import UserError
    from autoslm.searching.pareto import pareto_front
    from autoslm.searching.trials import best, records

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    db = RunDir(run_dir).study_db
    if storage is None and not db.is_file():
        raise UserError(f"'{run_dir}' holds no search (no study.db): give the --out directory of `autoslm search`")
    from autoslm.searching.storage import make_storage

    url = storage or f"sqlite:///{db.resolve()}"
    store = make_storage(url)  # also journal:PATH
    names = optuna.get_all_study_names(storage=store)
    name = study_name or ("autoslm" if "autoslm" in names else (names[0] if names else None))
    if name is None:
        raise UserError(f"storage {url} holds no study")
    study = optuna.load_study(study_name=name, storage=store)
    rows = records(study)
    return {
        "settings": study.user_attrs.get("settings", {}),
        "budget": _budget(study.user_attrs.get("settings", {})),
        "baseline": study.user_attrs.get("baseline"),
        "rows": rows,
        "best": best(rows),
        "pareto": pareto_front(rows),
        "study": name,
    }


def _budget(stored: dict[str, Any]) -> Any:
    """The stored search's budget; none when the settings cannot be read (the report still shows the trials)."""
    from autoslm.errors import UserError
    from autoslm.searching.budget import Budget
    from autoslm.searching.settings import SearchSettings

    try:
        return SearchSettings.model_validate(stored).limits
    except (ValueError, UserError):
        return Budget()


def plot(run: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, base, best = run["rows"], run["baseline"], run["best"]
    scored = [r for r in rows if r.quality and r.metrics]
    over = [r for r in rows if r.metrics and "decode_ms" in r.metrics and not r.quality and r.status == "infeasible"]
    pruned = [r for r in rows if r.metrics and not r.quality and r.low_ppl and r.status == "pruned"]
    fig, ax = plt.subplots(figsize=(9, 5.6), dpi=110)
    mem = [r.metrics["memory_mb"] for r in scored + over] + ([base["metrics"]["memory_mb"]] if base else [])
    vmin, vmax = (min(mem), max(mem)) if mem else (0, 1)
    sc = None
    if scored:
        sc = ax.scatter(
            [r.metrics["decode_ms"] for r in scored],
            [r.ppl for r in scored],
            c=[r.metrics["memory_mb"] for r in scored],
            cmap="viridis",
            vmin=vmin,
            vmax=vmax,
            s=46,
            edgecolors="k",
            linewidths=0.4,
            label="trials (colour: memory MB)",
            zorder=3,
        )
    if pruned:
        ax.scatter(
            [r.metrics["decode_ms"] for r in pruned], [r.low_ppl for r in pruned], marker="x", s=40,
            c="tab:gray", label="pruned (low-fidelity perplexity)", zorder=3,
        )  # fmt: skip
    ys = [r.ppl for r in scored] + [r.low_ppl for r in pruned] + ([base["ppl"]] if base else [])
    ys += [ref["ppl"] for ref in ((base or {}).get("references") or {}).values()]
    top = max(ys) * 1.25 if ys else 1.0
    if over:
        ax.scatter(
            [r.metrics["decode_ms"] for r in over],
            [top] * len(over),
            c=[r.metrics["memory_mb"] for r in over],
            cmap="viridis",
            vmin=vmin,
            vmax=vmax,
            marker="v",
            s=40,
            edgecolors="r",
            linewidths=0.6,
            label="over budget (quality not evaluated)",
            zorder=3,
        )
    front = sorted(run["pareto"], key=lambda r: r.metrics["decode_ms"])
    if front:
        ax.step(
            [r.metrics["decode_ms"] for r in front],
            [r.ppl for r in front],
            where="post",
            color="tab:orange",
            lw=1.5,
            label="Pareto front (ppl, decode, memory)",
            zorder=2,
        )
    if base:
        ax.scatter(
            [base["metrics"]["decode_ms"]], [base["ppl"]], marker="*", s=260, c="gold", edgecolors="k", zorder=4,
            label=f"baseline ({base['ppl']:.2f} ppl, {base['metrics']['decode_ms']:.1f} ms)",
        )  # fmt: skip
        refs = base.get("references") or {}
        for i, (name, ref) in enumerate(refs.items()):
            ax.scatter(
                [ref["metrics"]["decode_ms"]], [ref["ppl"]], marker="D", s=70, c="white", edgecolors="tab:purple",
                linewidths=1.6, zorder=4, label="presets the budget names" if i == 0 else None,
            )  # fmt: skip
            ax.annotate(name, (ref["metrics"]["decode_ms"], ref["ppl"]), textcoords="offset points", xytext=(6, 6),
                        fontsize=8, color="tab:purple")  # fmt: skip
        for lim in run["budget"].limits:
            if lim.metric == "decode_ms":
                x = lim.absolute(base["metrics"], {n: r["metrics"] for n, r in refs.items()})
                ax.axvline(x, color="tab:red", ls="--", lw=1.2, label=f"budget {lim}")
    if best:
        ax.scatter(
            [best.metrics["decode_ms"]], [best.ppl], marker="o", s=260, facecolors="none",
            edgecolors="tab:red", linewidths=2.2, zorder=5, label=f"chosen: trial {best.number}",
        )  # fmt: skip
    ax.set_xlabel("decode ms/token (median, measured on the target)")
    ax.set_ylabel("held-out perplexity (lower is better)")
    if ys and max(ys) / max(min(ys), 1e-9) > 20:
        ax.set_yscale("log")
    settings = run["settings"]
    depth = int(settings.get("context") or DECODE_CONTEXT)
    at = f" · at {depth} tokens of context" if depth > DECODE_CONTEXT else ""
    ax.set_title(
        f"{settings.get('model', '?')} · budget {settings.get('budget', '?')}{at} · {len(rows)} trials", fontsize=11
    )
    if sc is not None:
        fig.colorbar(sc, ax=ax, label="peak memory MB")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _kld(quality: dict[str, Any] | None) -> str:
    if not quality or quality.get("kld_mean") is None:
        return "-"
    return f"{quality['kld_mean']:.4f} / {quality['kld_p99']:.3f}"


def technique_usage(rows: list[TrialRecord], top: int = 5) -> list[tuple[str, int, int]]:
    """(technique, uses among the `top` best feasible policies, uses among all evaluated trials)."""
    feasible = sorted((r for r in rows if r.feasible and r.quality), key=lambda r: r.ppl)[:top]
    good = Counter(s["technique"] for r in feasible for s in r.steps)
    every = Counter(s["technique"] for r in rows if r.metrics for s in r.steps)
    return sorted(((t, good[t], every[t]) for t in every), key=lambda x: (-x[1], -x[2], x[0]))


def _presets_html(base: dict[str, Any] | None, best: Any, policy_text: Any) -> str:
    """The presets a budget names (measured after the baseline), beside the chosen policy."""
    refs = (base or {}).get("references") or {}
    if not refs:
        return ""
    rows = [(f"preset {n}", r["steps"], r["ppl"], r.get("quality"), r["metrics"]) for n, r in refs.items()]
    if best:
        rows.append((f"chosen (trial {best.number})", best.steps, best.ppl, best.quality, best.metrics))
    cells = ""
    for name, steps, ppl, quality, m in rows:
        bpw = f"{m['bpw']:.3f}" if "bpw" in m else "-"
        cells += (
            f"<tr><td>{html.escape(name)}</td><td>{html.escape(policy_text(steps))}</td><td>{ppl:.3f}</td>"
            f"<td>{_kld(quality)}</td><td>{m['decode_ms']:.2f}</td><td>{m['size_mb']:.2f}</td><td>{bpw}</td></tr>"
        )
    return (
        "<h2>Presets the budget names</h2><p>Built, measured and evaluated on the same target at the start of the "
        "search (checkpoints in <code>references/</code>).</p><table><tr><th></th><th>policy</th><th>ppl</th>"
        f"<th>KLD mean / p99</th><th>decode ms</th><th>size MB</th><th>bpw</th></tr>{cells}</table>"
    )


def baseline_drift(run: dict[str, Any], path: Path) -> Path | None:
    """The baseline's decode time over the search: measured at the start, then again beside every candidate timed
    in one process with it (close calls and busy-machine trials). None when it was never measured again."""
    base = run["baseline"]
    again = [(r.number, r.recheck["baseline"]["decode_ms"]) for r in run["rows"]
             if r.recheck and r.recheck.get("against", "baseline") == "baseline"
             and "decode_ms" in (r.recheck.get("baseline") or {})]  # fmt: skip
    if not base or not again:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 2.8), dpi=110)
    ax.axhline(base["metrics"]["decode_ms"], color="gold", lw=2, label="measured at the start (the budget's frame)")
    ax.scatter([n for n, _ in again], [ms for _, ms in again], c="tab:blue", s=30, zorder=3,
               label="measured again beside a candidate (median of the rounds)")  # fmt: skip
    ax.set_xlabel("trial")
    ax.set_ylabel("baseline decode ms")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def assignment(steps: list[dict[str, Any]]) -> dict[str, str] | None:
    """A per-tensor assignment in a policy: a parameter mapping block tensors (blk.N.NAME) to values."""
    for step in steps:
        for value in step.get("params", {}).values():
            if isinstance(value, dict) and value and all(str(k).startswith("blk.") for k in value):
                return {str(k): str(v) for k, v in value.items()}
    return None


def _sensitivity_html(run_dir: Path, best: Any) -> str:
    """The sensitivity table a technique measured (RUN/sensitivity/), as a heat map, with the chosen assignment."""
    from autoslm.sensitivity import SensitivityTable, heatmap

    tables = []
    for path in sorted(RunDir(run_dir).sensitivity.glob("*.json")):
        try:
            tables.append(SensitivityTable.load(path))
        except (ValueError, KeyError, TypeError, OSError):
            continue
    if not tables:
        return ""
    chosen = assignment(best.steps) if best else None
    table = next((t for t in tables if chosen and set(t.kld) == set(chosen)), tables[0])
    png = heatmap(table, RunDir(run_dir).sensitivity_png, chosen if chosen and set(chosen) == set(table.kld) else None,
                  order=_bits_order)  # fmt: skip
    image = base64.b64encode(png.read_bytes()).decode()
    return (
        f"<h2>Sensitivity</h2><p>KL divergence of the next-token distribution when only one tensor is at "
        f"{html.escape(table.probe)}, over {table.tokens} calibration tokens; {len(table.kld)} tensors measured in "
        f"{table.seconds:.0f} s. Right: the type the chosen policy gives each tensor.</p>"
        f'<img alt="sensitivity heat map" src="data:image/png;base64,{image}">'
    )


def _bits_order(kind: str) -> tuple[float, str]:
    """Types from fewest to most bits (llama.cpp's types by their bits per weight; others by name)."""
    from autoslm.runtimes.llamacpp import TYPE_BITS

    return (TYPE_BITS.get(kind, 99.0), kind)


def write(
    run_dir: Path, storage: str | None = None, study_name: str | None = None, out_dir: Path | None = None
) -> tuple[Path, Path]:
    """Write pareto.png and report.html into `out_dir` (default: `run_dir`); returns both paths. A folder that
    cannot be written is a one-line UserError naming it (a read-only run directory: pass another)."""
    run = load_run(run_dir, storage, study_name)
    out_dir = Path(out_dir or run_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        return _write(run, Path(run_dir), out_dir)
    except OSError as exc:
        hint = "pass --out DIR to write it elsewhere" if out_dir == Path(run_dir) else "choose another --out"
        where = exc.filename or out_dir
        raise UserError(f"cannot write the report: '{where}' ({exc.strerror or exc}); {hint}") from exc


def _write(run: dict[str, Any], run_dir: Path, out_dir: Path) -> tuple[Path, Path]:
    from autoslm.search_view import policy_text, recheck_text

    png = plot(run, out_dir / "pareto.png")
    image = base64.b64encode(png.read_bytes()).decode()
    base, best, settings = run["baseline"], run["best"], run["settings"]
    bm = base["metrics"] if base else {}

    def rel(value: float | None, ref: float | None) -> str:
        if value is None or not ref:
            return ""
        return f" ({(value / ref - 1) * 100:+.0f}%)"

    metrics = columns()
    heads = "".join(f"<th>{html.escape(metric.header)}</th>" for metric in metrics)
    body = []
    for r in sorted(run["rows"], key=lambda r: r.number):
        m = r.metrics or {}
        ppl = f"{r.ppl:.2f}{rel(r.ppl, base and base['ppl'])}" if r.quality else "-"
        cells = [str(r.number), html.escape(policy_text(r.steps) or "(none)"), ppl, _kld(r.quality)]
        for metric in metrics:  # "-": not measured (a file over a size budget is not timed)
            value = m.get(metric.name)
            cells.append(metric.format(value) + (rel(value, bm.get(metric.name)) if metric.timing else ""))
        cells += [
            html.escape(r.status + (" (cached)" if r.cached_from is not None else "") + recheck_text(r)),
            html.escape(r.reason or ""),
        ]
        cls = "best" if best and r.number == best.number else ("ok" if r.feasible else "")
        body.append(f"<tr class='{cls}'>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    usage = "".join(
        f"<tr><td>{html.escape(t)}</td><td>{g}</td><td>{a}</td></tr>" for t, g, a in technique_usage(run["rows"])
    )
    card_path = RunDir(run_dir).checkpoint / "README.md"  # the exported checkpoint's model card, where there is one
    card = ""
    if card_path.is_file():
        href = html.escape(os.path.relpath(card_path, out_dir))
        card = f"<br>Exported with its model card (what was measured, the commands that run it): <a href='{href}'>"
        card += f"{href}</a>"
    chosen = (
        f"<p><b>Chosen policy</b> (trial {best.number}): {html.escape(policy_text(best.steps))}<br>"
        f"perplexity {best.ppl:.2f}{rel(best.ppl, base['ppl'])}, decode {best.metrics['decode_ms']:.1f} ms"
        f"{rel(best.metrics['decode_ms'], bm.get('decode_ms'))}, memory {best.metrics['memory_mb']:.0f} MB, "
        f"size {best.metrics['size_mb']:.0f} MB{card}</p>"
        if best
        else "<p><b>No feasible policy yet.</b></p>"
    )
    baseline = (
        f"<p>Baseline: perplexity {base['ppl']:.2f}, decode {bm['decode_ms']:.1f} ms/token, memory "
        f"{bm['memory_mb']:.0f} MB, size {bm['size_mb']:.0f} MB.</p>"
        if base
        else "<p>Baseline not measured yet.</p>"
    )
    presets = _presets_html(base, best, policy_text)
    drift_png = baseline_drift(run, out_dir / "baseline-drift.png")
    drift = (
        "<h2>The baseline over time</h2><p>Its decode time measured again beside each candidate timed in one process "
        "with it (close calls, and trials on a busy machine): how far the machine drifted from the figure the "
        "budget was set from.</p>"
        f'<img alt="baseline decode ms over the trials" src="data:image/png;base64,'
        f'{base64.b64encode(drift_png.read_bytes()).decode()}">'
        if drift_png
        else ""
    )
    sensitivity = _sensitivity_html(run_dir, best)
    esc = {k: html.escape(str(settings.get(k))) for k in ("model", "budget", "space")}
    dashboard = html.escape(f"optuna-dashboard sqlite:///{(run_dir / 'study.db').resolve()}")
    meta = html.escape(json.dumps({"settings": settings, "best": best.number if best else None}))
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>autoslm report: {html.escape(str(run_dir))}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; }} td, th {{ border: 1px solid #ccc; padding: 3px 7px; }}
th {{ background: #f0f0f0; }} tr.best {{ background: #ffe9a8; }} tr.ok {{ background: #eef8ee; }}
code {{ background: #f4f4f4; padding: 1px 4px; }}
</style></head><body>
<h1>autoslm search report</h1>
<p>Run <code>{html.escape(str(run_dir))}</code> · study <code>{html.escape(run["study"])}</code> · model
<code>{esc["model"]}</code> · budget <code>{esc["budget"]}</code> · space <code>{esc["space"]}</code> ·
{len(run["rows"])} trials</p>
{baseline}
{chosen}
<img alt="perplexity vs decode ms" src="data:image/png;base64,{image}">
{presets}
{sensitivity}
{drift}
<h2>Techniques in the good policies</h2>
<table><tr><th>technique</th><th>in the 5 best feasible</th><th>in all measured trials</th></tr>{usage}</table>
<h2>Trials</h2>
<table><tr><th>#</th><th>policy</th><th>ppl</th><th>KLD mean / p99</th>{heads}<th>status</th><th>reason</th></tr>
{"".join(body)}
</table>
<p>Open the study in optuna-dashboard: <code>{dashboard}</code></p>
<script type="application/json" id="autoslm-run">{meta}</script>
</body></html>
"""
    out = out_dir / "report.html"
    out.write_text(page)
    return out, png


__all__ = ["assignment", "load_run", "plot", "technique_usage", "write"]
