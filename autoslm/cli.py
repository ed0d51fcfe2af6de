"""The `autoslm` command line. Heavy imports (torch, transformers) live inside commands so `--help` stays fast."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from autoslm.errors import UserError

app = typer.Typer(
    name="autoslm",
    help=(
        "Automated compression search for small language models.\n\n"
        "Models: smollm2-135m (default, ships offline), tiny-llama (random, for tests), a Hugging Face model "
        "directory, a .gguf file, or a hub id.\n\n"
        "Start with:  autoslm eval  ·  autoslm profile  ·  autoslm plugins"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console()
err = Console(stderr=True)

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="smollm2-135m | tiny-llama | MODEL_DIR | FILE.gguf | owner/name (hub, needs internet)",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON instead of a table")]
TargetOpt = Annotated[
    str, typer.Option(help="where to measure: local (this CPU) or http://HOST:PORT of a running `autoslm agent`")
]
TargetTokenOpt = Annotated[
    str | None, typer.Option(help="the agent's token (or set AUTOSLM_TARGET_TOKEN)", envvar="AUTOSLM_TARGET_TOKEN")
]


def _check_target_spec(target: str) -> None:
    if target != "local" and not target.startswith(("http://", "https://")):
        raise UserError(f"--target '{target}' is not understood: use local, or http://HOST:PORT of `autoslm agent`")


def _quiet_libraries() -> None:
    from autoslm._quiet import quiet_libraries

    quiet_libraries()


@app.command("eval")
def eval_cmd(
    model: ModelOpt = "smollm2-135m",
    fidelity: Annotated[str, typer.Option(help="full (default figures) or low (a cheap early estimate)")] = "full",
    ppl_tokens: Annotated[int | None, typer.Option(help="held-out tokens for perplexity (overrides fidelity)")] = None,
    items: Annotated[int | None, typer.Option(help="items per zero-shot task (overrides fidelity)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Held-out perplexity (Persuasion + Northanger Abbey) and two zero-shot tasks (hyperbaton, last-word cloze).

    Deterministic: the same model gives the same numbers on every run.

    Example:  autoslm eval --model smollm2-135m
    """
    from autoslm.evaluate import Fidelity

    fid = Fidelity.preset(fidelity)
    if ppl_tokens is not None:
        _positive("--ppl-tokens", ppl_tokens)
        fid = fid.model_copy(update={"ppl_tokens": ppl_tokens})
    if items is not None:
        _positive("--items", items)
        fid = fid.model_copy(update={"hyperbaton_items": items, "cloze_items": items})
    _quiet_libraries()
    from autoslm.evaluate import evaluate
    from autoslm.models import load_model

    with console.status(f"loading {model}"):
        lm = load_model(model)
    with console.status(
        f"evaluating {model} ({fid.ppl_tokens} tokens, {fid.hyperbaton_items}+{fid.cloze_items} items)"
    ):
        q = evaluate(lm.model, lm.tokenizer, fid)
    if as_json:
        print(json.dumps({"model": model, "fingerprint": lm.fingerprint, **q.model_dump()}, indent=2))
        return
    table = Table(title=f"quality of {model}", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("on", style="dim")
    table.add_row("perplexity (held-out)", f"{q.ppl:.3f}", f"{q.ppl_tokens} tokens of Persuasion + Northanger Abbey")
    table.add_row("hyperbaton accuracy", _pct(q.hyperbaton_acc), f"{q.hyperbaton_items} adjective-order pairs")
    table.add_row("cloze accuracy", _pct(q.cloze_acc), f"{q.cloze_items} last-word items")
    console.print(table)
    console.print(f"[dim]fingerprint {lm.fingerprint[:16]}  ·  {q.seconds:.1f}s[/dim]")


@app.command()
def profile(
    model: ModelOpt = "smollm2-135m",
    threads: Annotated[int, typer.Option(help="torch threads (pinned)")] = 2,
    prompt_tokens: Annotated[int, typer.Option(help="prompt length for prefill_ms")] = 128,
    decode_tokens: Annotated[int, typer.Option(help="tokens generated per decode run")] = 32,
    repeats: Annotated[int, typer.Option(help="timed runs after one warm-up")] = 3,
    target: TargetOpt = "local",
    target_token: TargetTokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure latency and memory on this machine's CPU in a fresh process, or on a device running `autoslm agent`.

    decode_ms: median (and p90) ms per generated token, batch 1, greedy, with KV cache.
    prefill_ms: one forward over a PROMPT_TOKENS prompt.  memory_mb: peak resident memory of the model in use.
    size_mb: weight files on disk.

    Examples:  autoslm profile --model smollm2-135m --threads 2
               autoslm profile --model runs/x/checkpoint --target http://phone.lan:8765 --target-token $TOKEN
    """
    for flag, value in (("--threads", threads), ("--prompt-tokens", prompt_tokens), ("--repeats", repeats)):
        _positive(flag, value)
    if decode_tokens < 2:
        raise UserError(f"--decode-tokens must be at least 2 (got {decode_tokens})")
    _check_target_spec(target)
    _quiet_libraries()
    from autoslm.models import resolve
    from autoslm.targets import MeasureSettings, get_target

    settings = MeasureSettings(
        threads=threads, prompt_tokens=prompt_tokens, decode_tokens=decode_tokens, repeats=repeats
    )
    with console.status(f"preparing {model}"):
        directory = resolve(model)
    where = "in a fresh process" if target == "local" else f"on {target}"
    options = {} if target == "local" else {"token": target_token}
    from autoslm.targets.local import MeasurementError

    with console.status(f"measuring {model} {where} ({threads} threads)"):
        try:
            m = get_target(target, **options).measure(directory, settings)
        except MeasurementError as exc:
            raise UserError(f"could not measure {model} on {target}: {exc}") from exc
    if as_json:
        print(json.dumps({"model": model, **m.model_dump()}, indent=2))
        return
    table = Table(title=f"{model} on {m.target['cpu']} ({m.target['threads']} threads)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("decode ms/token (median)", f"{m.decode_ms:.2f}")
    table.add_row("decode ms/token (p90)", f"{m.decode_p90_ms:.2f}")
    table.add_row("decode tokens/s", f"{1000 / m.decode_ms:.1f}")
    table.add_row(f"prefill ms ({m.prompt_tokens} tokens)", f"{m.prefill_ms:.1f}")
    table.add_row("memory MB (peak in use)", f"{m.memory_mb:.1f}")
    table.add_row("size MB (weights on disk)", f"{m.size_mb:.1f}")
    console.print(table)
    console.print(f"[dim]target {m.target['id']}  ·  torch {m.target['torch']}  ·  load {m.load_s:.2f}s[/dim]")


@app.command()
def search(
    model: ModelOpt = "smollm2-135m",
    budget: Annotated[
        str, typer.Option(help="hard limits, absolute or relative to the baseline: 'decode_ms<=0.7x,memory_mb<=500'")
    ] = "decode_ms<=0.7x",
    trials: Annotated[int, typer.Option(help="candidate policies to evaluate (the baseline is extra)")] = 12,
    space: Annotated[
        str, typer.Option(help="search space: a shipped one (default, quant-only, prune-quant, tiny) or a YAML file")
    ] = "default",
    out: Annotated[str, typer.Option(help="run directory (study.db, recipe.yaml, checkpoint/)")] = "runs/search",
    seed: Annotated[int, typer.Option(help="seed for the sampler and every technique")] = 0,
    sampler: Annotated[str, typer.Option(help="tpe | nsga2 | random")] = "tpe",
    resume: Annotated[bool, typer.Option(help="continue the search stored in --out")] = False,
    storage: Annotated[
        str | None, typer.Option(help="Optuna storage URL (default: sqlite in --out); journal:PATH for a journal file")
    ] = None,
    study: Annotated[str, typer.Option(help="study name inside the storage")] = "autoslm",
    timeout: Annotated[float | None, typer.Option(help="stop starting new trials after this many seconds")] = None,
    fidelity: Annotated[str, typer.Option(help="quality evaluation of each candidate: full or low")] = "full",
    warm_start: Annotated[
        bool, typer.Option(help="first try each technique alone at its defaults (up to a third of the trials)")
    ] = True,
    target: TargetOpt = "local",
    target_token: TargetTokenOpt = None,
    backend: Annotated[str, typer.Option(help="optuna (this process) or ray (Ray Tune, on a Ray cluster)")] = "optuna",
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster to join (e.g. 10.0.0.5:6379); default: start a local Ray")
    ] = None,
    max_concurrent: Annotated[int, typer.Option(help="--backend ray: trials running at once")] = 2,
    cpus_per_trial: Annotated[float, typer.Option(help="--backend ray: CPUs Ray reserves per trial")] = 1.0,
    recheck_rounds: Annotated[
        int,
        typer.Option(
            help="close calls (decode or prefill within --recheck-margin of its limit) are timed again beside the "
            "baseline, alternating for this many rounds, and judged on the median ratio; 0 trusts one measurement"
        ),
    ] = 4,
    recheck_margin: Annotated[
        float, typer.Option(help="how near a limit is a close call, as a fraction of it (0.15 = within 15%)")
    ] = 0.15,
) -> None:
    """Search compression policies under a latency/memory budget measured on this machine.

    Each trial applies a policy (techniques from the space, in stage order), saves the checkpoint, measures it in
    a fresh process, rejects it cheaply when over budget, estimates quality at low fidelity (hopeless ones are
    pruned), then evaluates held-out perplexity. The best feasible policy is exported as OUT/recipe.yaml +
    OUT/checkpoint/. State lives in OUT/study.db: Ctrl-C, then --resume, loses no finished trial.

    Distributed: --backend ray spreads trials over a Ray cluster (--ray-address); or start several
    `autoslm search --storage URL --study NAME` processes (SQLite, journal:PATH, postgresql://...) that split one
    study's trials. A remote device measures through `autoslm agent` (--target http://HOST:PORT).

    Example:  autoslm search --model smollm2-135m --budget "decode_ms<=0.7x" --trials 12
    """
    _positive("--trials", trials)
    if timeout is not None and timeout <= 0:
        raise UserError(f"--timeout must be positive (got {timeout})")
    from autoslm.evaluate import Fidelity
    from autoslm.search.budget import Budget

    Budget.parse(budget)  # fail on malformed input before loading anything
    _check_target_spec(target)
    if backend not in ("optuna", "ray"):
        raise UserError(f"--backend '{backend}' is not known: use optuna or ray")
    if ray_address and backend != "ray":
        raise UserError("--ray-address needs --backend ray")
    _positive("--max-concurrent", max_concurrent)
    if cpus_per_trial <= 0:
        raise UserError(f"--cpus-per-trial must be positive (got {cpus_per_trial})")
    if recheck_rounds < 0:
        raise UserError(f"--recheck-rounds must be 0 or more (got {recheck_rounds})")
    if not 0 <= recheck_margin < 1:
        raise UserError(f"--recheck-margin must be a fraction in [0, 1), e.g. 0.15 (got {recheck_margin})")
    Fidelity.preset(fidelity)
    _quiet_libraries()
    from autoslm.models import parse_spec
    from autoslm.search.optuna_backend import make_sampler
    from autoslm.search.space import find_space_file

    parse_spec(model)
    find_space_file(space)
    make_sampler(sampler, seed)
    from autoslm.search import SearchSettings, run_search
    from autoslm.search_view import SearchView

    settings = SearchSettings(
        model=model,
        budget=budget,
        space=space,
        trials=trials,
        out=out,
        seed=seed,
        sampler=sampler,
        storage=storage,
        study=study,
        timeout_s=timeout,
        fidelity=fidelity,
        warm_start=warm_start,
        target=target,
        target_token=target_token,
        backend=backend,
        ray_address=ray_address,
        max_concurrent=max_concurrent,
        cpus_per_trial=cpus_per_trial,
        recheck_rounds=recheck_rounds,
        recheck_margin=recheck_margin,
    )
    with SearchView(console, trials) as view:
        result = run_search(settings, resume=resume, progress=view.event)
    view.summary(result)


@app.command()
def apply(
    recipe: Annotated[str, typer.Argument(help="a recipe.yaml written by `autoslm search`")],
    out: Annotated[str, typer.Option(help="directory for the rebuilt checkpoint")],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="base model spec (default: the one the recipe names)")
    ] = None,
    force: Annotated[bool, typer.Option(help="apply even if the base model's fingerprint differs")] = False,
) -> None:
    """Rebuild a compressed checkpoint from its base model and a recipe (same seed, same weights).

    Example:  autoslm apply runs/smollm2-135m/recipe.yaml --out ckpt/
    """
    _quiet_libraries()
    from autoslm.checkpoint import sha256_file
    from autoslm.recipe import apply_recipe

    with console.status(f"applying {recipe}"):
        directory = apply_recipe(recipe, out, model=model, force=force)
    console.print(
        f"checkpoint written to {directory}  ·  model.safetensors sha256 {sha256_file(directory / 'model.safetensors')}"
    )


@app.command()
def plugins(as_json: JsonOpt = False) -> None:
    """List installed technique plugins (entry point group `autoslm`), their techniques and load status.

    AUTOSLM_PLUGINS=a,b loads only those plugins; AUTOSLM_PLUGINS_STRICT=1 turns plugin failures into errors.
    """
    from autoslm.plugins import get_registry

    reg = get_registry()
    if as_json:
        print(json.dumps([vars(p) for p in reg.plugins.values()], indent=2))
        return
    table = Table(title="autoslm plugins")
    for col in ("plugin", "distribution", "version", "techniques", "status"):
        table.add_column(col)
    for p in reg.plugins.values():
        status = {"loaded": "[green]loaded[/green]", "disabled": "[dim]disabled[/dim]"}.get(
            p.status, f"[red]failed[/red]: {p.error}"
        )
        table.add_row(p.name, p.dist, p.version, ", ".join(p.techniques) or "-", status)
    console.print(table)


@app.command()
def report(
    run_dir: Annotated[str, typer.Argument(help="the --out directory of `autoslm search` (finished or running)")],
    storage: Annotated[str | None, typer.Option(help="the search's --storage, when it was not the default")] = None,
    study: Annotated[str | None, typer.Option(help="study name inside --storage")] = None,
) -> None:
    """Write RUN_DIR/report.html (self-contained) and RUN_DIR/pareto.png from the search's study.

    Works while the search is still running: it reads the trials finished so far.

    Example:  autoslm report runs/smollm2-135m && xdg-open runs/smollm2-135m/report.html
    """
    from pathlib import Path

    from autoslm import report as _report

    html_path, png = _report.write(Path(run_dir), storage, study)
    console.print(f"report: {html_path}\npicture: {png}", highlight=False)


@app.command()
def agent(
    token: Annotated[
        str | None,
        typer.Option(help="shared secret clients must send (or set AUTOSLM_AGENT_TOKEN)", envvar="AUTOSLM_AGENT_TOKEN"),
    ] = None,
    host: Annotated[str, typer.Option(help="address to bind; 0.0.0.0 exposes it to the network")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8765,
    max_upload_mb: Annotated[float, typer.Option(help="largest checkpoint upload accepted (else 413)")] = 4096,
    max_queue: Annotated[int, typer.Option(help="measurements allowed to wait (else 503, the client retries)")] = 4,
    timeout_s: Annotated[float, typer.Option(help="time limit of one measurement (else 504)")] = 900,
) -> None:
    """Serve measurements on this device for a search running elsewhere (`--target http://HOST:PORT`).

    Uploads are checkpoints as tar archives of safetensors + JSON files (pickles are refused), checked against
    their manifest's sha256 sums, measured one at a time in a fresh process with the same code as the local target.
    Every request but GET /health needs 'Authorization: Bearer TOKEN'. See docs/agent.md for the security model.

    Example:  AUTOSLM_AGENT_TOKEN=$(openssl rand -hex 16) autoslm agent --host 0.0.0.0 --port 8765
    """
    _positive("--port", port)
    _positive("--max-queue", max_queue)
    if not token or len(token) < 8:
        raise UserError("autoslm agent needs --token (or AUTOSLM_AGENT_TOKEN) of at least 8 characters")
    if max_upload_mb <= 0 or timeout_s <= 0:
        raise UserError("--max-upload-mb and --timeout-s must be positive")
    _quiet_libraries()
    from autoslm.agent import Agent, serve

    service = Agent(token, max_upload_mb=max_upload_mb, max_queue=max_queue, timeout_s=timeout_s)
    fp = service.target.fingerprint()
    console.print(
        f"autoslm agent on http://{host}:{port}  ·  device {fp['id']} ({fp['cpu']}, {fp['threads']} threads)  ·  "
        f"uploads <= {max_upload_mb:g} MB  ·  Ctrl-C stops",
        highlight=False,
    )
    serve(service, host=host, port=port)


def _positive(flag: str, value: int) -> None:
    if value < 1:
        raise UserError(f"{flag} must be a positive integer (got {value})")


def _error(message: str) -> None:
    err.print(f"[red]error:[/red] {' '.join(message.split())}", highlight=False, soft_wrap=True)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def main(argv: list[str] | None = None) -> int:
    """Entry point: user mistakes print one line (`error: ...`) and exit 2; no traceback."""
    try:  # typer >= 0.20 vendors click
        from typer._click import exceptions as click_exc
    except ImportError:  # pragma: no cover
        from click import exceptions as click_exc  # type: ignore[no-redef]

    try:
        app(args=argv, standalone_mode=False)
    except UserError as exc:
        _error(str(exc))
        return 2
    except click_exc.NoArgsIsHelpError:
        return 0
    except click_exc.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "autoslm"
        _error(f"{exc.format_message()} (see `{command} --help`)")
        return 2
    except typer.Abort:
        err.print("aborted")
        return 130
    except typer.Exit as exc:
        return int(getattr(exc, "exit_code", 0) or 0)
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
