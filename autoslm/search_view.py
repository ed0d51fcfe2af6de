"""What `autoslm search` shows: the space, the baseline, a progress bar with best-so-far, and the final tables."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from autoslm.pipeline import policy_text
from autoslm.run_dir import RunDir
from autoslm.searching.forecast import duration, revised_line
from autoslm.targets import DECODE_CONTEXT

if TYPE_CHECKING:
    from autoslm.searching.trials import TrialRecord


class SearchView:
    def __init__(self, console: Console, trials: int) -> None:
        self.console = console
        self.trials = trials
        self.baseline: dict[str, Any] | None = None
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[best]}"),
            console=console,
        )
        self.task = None
        self._left: float | None = None  # the search's time left at its pace so far (runner.time_left)

    HEARTBEAT_S = 30.0  # output that is not a terminal (a pipe, a log file): the running phase, this often

    def __enter__(self) -> SearchView:
        import contextlib
        import threading

        from autoslm import progress

        self.progress.start()
        self.task = self.progress.add_task("baseline", total=self.trials, best="")
        self._phase: tuple[str, float] | None = None
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(progress.listen(self._on_phase))
        self._stop = threading.Event()
        if not self.console.is_terminal:  # the live bar is not drawn there: say what runs, every HEARTBEAT_S
            threading.Thread(target=self._heartbeat, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._stack.close()
        self.progress.stop()

    def _on_phase(self, name: str, done: int | None, total: int | None, seconds: float) -> None:
        """The work's own report (autoslm.progress): which phase runs, how far it has got."""
        import time

        how_far = f" {done}/{total}" if done is not None and total else ""
        self._phase = (f"{name}{how_far}", time.monotonic() - seconds)
        self.progress.update(self.task, description=f"{name}{how_far}")

    def _heartbeat(self) -> None:
        import time

        while not self._stop.wait(self.HEARTBEAT_S):
            if self._phase:
                text, since = self._phase
                left = f"; the search: about {duration(self._left)} left" if self._left is not None else ""
                self.console.print(f"  ... {text} (for {time.monotonic() - since:.0f} s{left})", highlight=False)

    def _references(self, payload: dict[str, Any]) -> None:
        """The presets the budget names, as measured here, and the limits they set."""
        refs = payload["baseline"].get("references") or {}
        for name, ref in refs.items():
            m = ref["metrics"]
            limits = [f"{lim.metric}<={lim.absolute(payload['baseline']['metrics'], {name: m}):.4g}"
                      for lim in payload["budget"].limits if lim.reference == name]  # fmt: skip
            self.progress.console.print(
                f"preset {name} ({policy_text(ref['steps'])}): ppl {ref['ppl']:.2f}, decode {m['decode_ms']:.1f} "
                f"ms/token, size {m['size_mb']:.1f} MB"
                + (f", {m['bpw']:.2f} bpw" if "bpw" in m else "")
                + (f"  ·  {', '.join(limits)}" if limits else ""),
                highlight=False,
            )

    def event(self, kind: str, payload: Any) -> None:
        if kind == "space":
            table = Table(title=f"search space '{payload.name}'", show_header=True)
            for col in ("technique", "parameter", "range"):
                table.add_column(col)
            for row in payload.describe():
                table.add_row(*row)
            self.progress.console.print(table)
        elif kind == "warning":
            self.progress.console.print(f"[yellow]warning:[/yellow] {payload}", highlight=False)
        elif kind == "resumed":
            self.progress.console.print(f"resuming the stored search with: {'; '.join(payload)}", highlight=False)
        elif kind == "baseline_start":
            self.progress.update(self.task, description="measuring the baseline")
        elif kind == "baseline":
            self.baseline = payload["baseline"]
            m = self.baseline["metrics"]
            budget = payload["budget"] if payload["budget"].limits else "none (no limits: the most accurate wins)"
            depth = int(payload.get("context") or DECODE_CONTEXT)
            at = f" at {depth} tokens of context" if depth > DECODE_CONTEXT else ""
            self.progress.console.print(
                f"baseline: ppl {self.baseline['ppl']:.2f}, decode {m['decode_ms']:.1f} ms/token{at}, "
                f"memory {m['memory_mb']:.0f} MB, size {m['size_mb']:.0f} MB  ·  budget {budget}"
            )
            busy = self.baseline.get("interference") or {}
            if busy.get("disturbed"):
                from autoslm.targets.interference import describe

                self.progress.console.print(
                    f"[yellow]warning:[/yellow] the machine stayed busy while the baseline was timed ({describe(busy)},"
                    f" {len(busy.get('attempts', []))} tries): timing verdicts are made beside the baseline in one "
                    "process; better, stop the other work and --resume in a new --out",
                    highlight=False,
                )
            self._references(payload)
            self.progress.update(self.task, description="searching")
        elif kind == "forecast":
            self.progress.console.print(payload.line(), highlight=False)
        elif kind == "forecast_revised":
            self.progress.console.print(revised_line(payload["total_s"], payload["per_trial_s"]), highlight=False)
        elif kind == "reference_start":
            self.progress.update(self.task, description=f"measuring preset {payload['name']}")
        elif kind == "references":
            self._references(payload)
            self.progress.update(self.task, description="searching")
        elif kind == "trial":
            self._phase = None
            row, best = payload["trial"], payload["best"]
            left = self._left = payload.get("left_s")
            self.progress.update(
                self.task,
                description="searching" if left is None else f"searching, about {duration(left)} left",
                completed=min(payload["done"], self.trials),
                best=f"best ppl {best.ppl:.2f} (trial {best.number})" if best else "no feasible yet",
            )
            self.progress.console.print(f"  trial {row.number:>3} {_status(row):<32} {policy_text(row.steps)}")

    def summary(self, result: Any) -> None:
        base = result.baseline
        bm = base["metrics"]
        if result.best is None:
            self.console.print("[bold red]no feasible policy[/bold red] met the budget; closest candidates:")
            table = _table(result.closest, bm, base["ppl"])
            self.console.print(table)
            hint = (
                f"all {len(result.failed)} trials failed: see {RunDir(result.run_dir).logs}/"
                if result.all_failed
                else "loosen the budget or widen the space and --resume"
            )
            self.console.print(
                f"everything is saved in {result.run_dir}/ (trials.json, study.db, report.html); {hint}",
                highlight=False,
            )
            if getattr(result, "forecast", None):
                self.console.print(result.forecast, highlight=False)
            return
        self.console.print(_table([result.best], bm, base["ppl"], title="best feasible policy"))
        self.console.print(_table(result.pareto, bm, base["ppl"], title="Pareto set (ppl, decode ms, memory MB)"))
        self.console.print(
            f"recipe: {result.recipe_path}\ncheckpoint: {result.checkpoint_path}\nreport: {result.report_path}",
            highlight=False,
        )
        if getattr(result, "forecast", None):
            self.console.print(result.forecast, highlight=False)


def recheck_text(row: TrialRecord) -> str:
    """' (close call: re-measured 2x beside the baseline, 0.68x)' for a trial decided on re-measurements,
    ' (waited 40 s for a quiet machine)' for one whose measurement had to wait, and ' (machine busy: measured 3 times,
    ...)' for one whose measurement was disturbed."""
    text = ""
    figures = row.interference or {}
    waited = sum((f or {}).get("waited_s", 0.0) for f in figures.get("attempts") or [figures])
    if waited >= 5:  # the poll itself takes 3 s on a quiet machine
        text += f" (waited {waited:.0f} s for a quiet machine{'' if figures.get('quiet', True) else ', in vain'})"
    if figures.get("attempts"):
        from autoslm.targets.interference import describe

        settled = "settled" if not figures.get("disturbed") else f"still busy: {describe(figures)}"
        text += f" (machine busy: measured {len(figures['attempts'])} times, {settled})"
    if figures.get("upper_bound"):
        text += " (machine busy: timed under load, within budget even so; its timing is an upper bound)"
    recheck = row.recheck
    if not recheck:
        return text
    ratio = recheck.get("ratios", {}).get("decode_ms")
    against = recheck.get("against", "baseline")
    beside = "the baseline" if against == "baseline" else f"preset {against}"
    why = "close call" if against == "baseline" else "budget against a preset"
    why = "machine busy" if figures.get("disturbed") else why
    decode = f", decode {ratio:.2f}x" if ratio else ""
    return text + f" ({why}: re-measured {recheck['rounds']}x beside {beside}{decode})"


def _status(row: TrialRecord) -> str:
    if row.cached_from is not None:
        return f"cached (= trial {row.cached_from})"
    if row.status == "complete" and row.ppl is not None:
        return f"ppl {row.ppl:.2f}, {row.metrics.get('decode_ms', 0):.1f} ms" + recheck_text(row)
    if row.status == "infeasible":
        worst = max(row.violations, key=row.violations.get)
        return f"over budget ({worst} +{100 * row.violations[worst]:.0f}%)" + recheck_text(row)
    return f"{row.status}: {(row.reason or '')[:60]}"


def _table(rows: list[TrialRecord], bm: dict[str, float], base_ppl: float, title: str = "") -> Table:
    """Trials as rows; after quality, a column per metric of the metrics table (decode ms with its speedup)."""
    from autoslm.metrics import columns

    table = Table(title=title)
    table.add_column("trial", justify="right")
    table.add_column("policy", overflow="fold", min_width=24)
    for col in ("ppl", "KLD"):
        table.add_column(col, justify="right")
    metrics = columns()
    for metric in metrics:
        table.add_column(metric.header, justify="right")
        if metric.name == "decode_ms":
            table.add_column("speedup", justify="right")
    for r in rows:
        m = r.metrics
        ppl = f"{r.ppl:.2f} ({100 * (r.ppl / base_ppl - 1):+.0f}%)" if r.quality else "-"
        kld = (r.quality or {}).get("kld_mean")
        cells = [str(r.number), policy_text(r.steps), ppl, "-" if kld is None else f"{kld:.4f}"]
        for metric in metrics:  # "-": not measured (a file over a size budget is not timed)
            cells.append(metric.format(m.get(metric.name)))
            if metric.name == "decode_ms":
                cells.append(f"{bm['decode_ms'] / m['decode_ms']:.2f}x" if m.get("decode_ms") else "-")
        table.add_row(*cells)
    return table
