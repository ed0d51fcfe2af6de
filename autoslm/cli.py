"""The `autoslm` command line. Heavy imports (torch, transformers) live inside commands so `--help` stays fast."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from autoslm.errors import UserError
from autoslm.models import spec_help
from autoslm.run_dir import RunDir

app = typer.Typer(
    name="autoslm",
    help=(
        "Automated compression search for small language models.\n\n"
        "Models: smollm2-135m (default, ships offline), tiny-llama / tiny-gemma3 (random, for tests), a Hugging Face "
        "model directory, a .gguf file, or a hub id.\n\n"
        "Start with:  autoslm eval  ·  autoslm profile  ·  autoslm plugins"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _width(stream: object) -> int | None:
    """A table written to a file or a pipe keeps every column: 160 columns there (COLUMNS still wins), the
    terminal's width on a terminal."""
    return None if getattr(stream, "isatty", lambda: False)() or os.environ.get("COLUMNS") else 160


console = Console(width=_width(sys.stdout))
err = Console(stderr=True, width=_width(sys.stderr))

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help=spec_help(),
    ),
]
RuntimeOpt = Annotated[
    str, typer.Option(help="what runs the model: torch (eager PyTorch) or llama.cpp (GGUF); see `autoslm plugins`")
]
UnverifiedOpt = Annotated[
    bool,
    typer.Option(help="load an autoslm checkpoint whose manifest (checksums) is missing, e.g. deleted after a change"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON instead of a table")]
TargetOpt = Annotated[
    str, typer.Option(help="where to measure: local (this CPU) or http://HOST:PORT of a running `autoslm agent`")
]
TargetTokenOpt = Annotated[
    str | None, typer.Option(help="the agent's token (or set AUTOSLM_TARGET_TOKEN)", envvar="AUTOSLM_TARGET_TOKEN")
]


def _options_from(
    settings: type[Any], skip: tuple[str, ...] = (), flags: dict[str, tuple[str, ...]] | None = None,
    envvars: dict[str, str] | None = None,
) -> list[Any]:  # fmt: skip
    """One keyword-only CLI option per field of the pydantic `settings` (its description is the help), so a command
    line and the settings it builds cannot drift apart. `flags`: field -> option names where they are not the field's
    name in dashes; `skip`: fields the command declares itself."""
    import inspect

    params = []
    for name, field in settings.model_fields.items():
        if name in skip:
            continue
        decls = (flags or {}).get(name, () if field.annotation is bool else ("--" + name.replace("_", "-"),))
        secret = bool(field.exclude)
        option = typer.Option(*decls, help=field.description, envvar=(envvars or {}).get(name), show_default=not secret)
        annotation = Annotated[field.annotation, option]  # type: ignore[name-defined]
        params.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=field.default, annotation=annotation)
        )
    return params


def _with_options(func: Callable[..., None], fixed: list[Any], generated: list[Any]) -> Callable[..., None]:
    """`func(**fixed, **generated)` as a typer command with those parameters (its docstring is the help)."""
    import inspect

    params = [*fixed, *generated]

    def command(**options: object) -> None:
        func(**options)

    command.__doc__ = func.__doc__
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


def _with_settings_options(func: Callable[..., None]) -> Callable[..., None]:
    """`func(ctx, resume, **options)` with one CLI option per SearchSettings field, so the command line, the API and
    the stored settings cannot drift apart."""
    import inspect

    from autoslm.searching.settings import SearchSettings

    fixed = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
        inspect.Parameter(
            "resume",
            inspect.Parameter.KEYWORD_ONLY,
            default=False,
            annotation=Annotated[bool, typer.Option(help="continue the search stored in --out")],
        ),
    ]
    flags = {"model": ("--model", "-m"), "timeout_s": ("--timeout",)}
    generated = _options_from(SearchSettings, flags=flags, envvars={"target_token": "AUTOSLM_TARGET_TOKEN"})
    return _with_options(func, fixed, generated)


def _quiet_libraries() -> None:
    from autoslm.quiet import quiet_libraries

    quiet_libraries()


@app.command("eval")
def eval_cmd(
    model: ModelOpt = "smollm2-135m",
    fidelity: Annotated[str, typer.Option(help="full (default figures) or low (a cheap early estimate)")] = "full",
    ppl_tokens: Annotated[int | None, typer.Option(help="held-out tokens for perplexity (overrides fidelity)")] = None,
    items: Annotated[int | None, typer.Option(help="items per zero-shot task (overrides fidelity)")] = None,
    runtime: RuntimeOpt = "torch",
    allow_unverified: UnverifiedOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Held-out perplexity (Persuasion + Northanger Abbey) and two zero-shot tasks (hyperbaton, last-word cloze).

    Deterministic: the same model gives the same numbers on every run.

    Example:  autoslm eval --model smollm2-135m
    """
    _allow_unverified(allow_unverified)
    from autoslm.evaluate import Fidelity

    fid = Fidelity.preset(fidelity)
    if ppl_tokens is not None:
        _positive("--ppl-tokens", ppl_tokens)
        fid = fid.model_copy(update={"ppl_tokens": ppl_tokens})
    if items is not None:
        _positive("--items", items)
        fid = fid.model_copy(update={"hyperbaton_items": items, "cloze_items": items})
    from autoslm.runtimes import get_runtime

    rt = get_runtime(runtime)
    _quiet_libraries()
    from autoslm import checkpoint
    from autoslm.models import load_model

    with console.status(f"loading {model}"):
        if runtime == "torch":
            lm = load_model(model)
            subject, tokenizer, directory, fingerprint = lm.model, lm.tokenizer, lm.source_dir, lm.fingerprint
        else:  # the runtime's own file (a GGUF for llama.cpp), fingerprinted by its sha256
            directory = rt.prepare(model)
            subject, tokenizer = None, checkpoint.load_tokenizer(directory)
            fingerprint = checkpoint.sha256_file(checkpoint.weights_file(directory))
    with console.status(
        f"evaluating {model} in {runtime} ({fid.ppl_tokens} tokens, {fid.hyperbaton_items}+{fid.cloze_items} items)"
    ):
        q = rt.evaluate(subject, tokenizer, directory, fid)
    if as_json:
        print(json.dumps({"model": model, "runtime": runtime, "fingerprint": fingerprint, **q.model_dump()}, indent=2))
        return
    table = Table(title=f"quality of {model} ({runtime})", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("on", style="dim")
    table.add_row("perplexity (held-out)", f"{q.ppl:.3f}", f"{q.ppl_tokens} tokens of Persuasion + Northanger Abbey")
    table.add_row("hyperbaton accuracy", _pct(q.hyperbaton_acc), f"{q.hyperbaton_items} adjective-order pairs")
    table.add_row("cloze accuracy", _pct(q.cloze_acc), f"{q.cloze_items} last-word items")
    console.print(table)
    console.print(f"[dim]fingerprint {fingerprint[:16]}  ·  {q.seconds:.1f}s[/dim]")


def _profile(
    model: str, target: str, target_token: str | None, runtime: str, allow_unverified: bool, as_json: bool,
    **measure: Any,
) -> None:  # fmt: skip
    """Measure latency and memory on this machine's CPU in a fresh process, or on a device running `autoslm agent`.

    decode_ms: median (and p90) ms per generated token, batch 1, greedy, with KV cache holding CONTEXT tokens.
    prefill_ms: one forward over a PROMPT_TOKENS prompt.  memory_mb: peak resident memory of the model in use.
    size_mb: weight files on disk.

    Examples:  autoslm profile --model smollm2-135m --threads 2
               autoslm profile --model smollm2-135m --runtime llama.cpp --context 4096
               autoslm profile --model runs/x/checkpoint --target http://phone.lan:8765 --target-token $TOKEN
    """
    from pydantic import ValidationError

    from autoslm.searching.settings import one_line_error
    from autoslm.targets import MeasureSettings, get_target

    try:  # checked before anything is loaded
        settings = MeasureSettings(runtime=runtime, **measure)
    except ValidationError as exc:
        raise UserError(one_line_error(exc, {"timeout_s": "--measure-timeout"})) from exc
    _allow_unverified(allow_unverified)
    from autoslm.runtimes import get_runtime

    rt = get_runtime(runtime)
    measuring = get_target(target, token=target_token)
    _quiet_libraries()
    threads = settings.threads
    with console.status(f"preparing {model}"):
        directory = rt.prepare(model)
    from autoslm.targets.local import MeasurementError

    with console.status(f"measuring {model} on {target} with {runtime} ({threads} threads)"):
        try:
            m = measuring.measure(directory, settings)
        except MeasurementError as exc:
            raise UserError(f"could not measure {model} on {target}: {exc}") from exc
    if as_json:
        print(json.dumps({"model": model, **m.model_dump()}, indent=2))
        return
    table = Table(title=f"{model} on {m.target['cpu']} ({m.target['threads']} threads)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row(f"decode ms/token (median, at {m.context} tokens of context)", f"{m.decode_ms:.2f}")
    table.add_row("decode ms/token (p90)", f"{m.decode_p90_ms:.2f}")
    table.add_row("decode tokens/s", f"{1000 / m.decode_ms:.1f}")
    table.add_row(f"prefill ms ({m.prompt_tokens} tokens)", f"{m.prefill_ms:.1f}")
    table.add_row("memory MB (peak in use, KV cache included)", f"{m.memory_mb:.1f}")
    table.add_row("size MB (weights on disk)", f"{m.size_mb:.1f}")
    from autoslm.metrics import BUILTIN, all_metrics

    values, builtin = m.metrics(), {metric.name for metric in BUILTIN}
    for metric in all_metrics().values():  # what a plugin measures and declared (register_metrics)
        if metric.name not in builtin and metric.name in values:
            table.add_row(f"{metric.header} ({metric.label})", metric.format(values[metric.name]))
    console.print(table)
    if m.decode_p90_ms > 2 * m.decode_ms:
        console.print(
            f"[yellow]decode p90 is {m.decode_p90_ms / m.decode_ms:.1f}x the median: other work on this machine "
            "interfered with some tokens; the median stands, but rerun on a quiet machine to trust the spread[/yellow]"
        )
    versions = "  ·  ".join(f"{k} {v}" for k, v in rt.version().items()) or f"torch {m.target['torch']}"
    console.print(f"[dim]target {m.target['id']}  ·  {runtime}: {versions}  ·  load {m.load_s:.2f}s[/dim]")


def _profile_command() -> Callable[..., None]:
    """`profile`'s options: the model, where and in what it runs, and one per MeasureSettings field."""
    import inspect

    from autoslm.targets import MeasureSettings

    kw = inspect.Parameter.KEYWORD_ONLY
    fixed = [
        inspect.Parameter("model", kw, default="smollm2-135m", annotation=ModelOpt),
        inspect.Parameter("target", kw, default="local", annotation=TargetOpt),
        inspect.Parameter("target_token", kw, default=None, annotation=TargetTokenOpt),
        inspect.Parameter("runtime", kw, default="torch", annotation=RuntimeOpt),
        inspect.Parameter("allow_unverified", kw, default=False, annotation=UnverifiedOpt),
        inspect.Parameter("as_json", kw, default=False, annotation=JsonOpt),
    ]
    generated = _options_from(MeasureSettings, skip=("runtime",), flags={"timeout_s": ("--measure-timeout",)})
    return _with_options(_profile, fixed, generated)


app.command("profile")(_profile_command())


def _search(ctx: typer.Context, resume: bool, **options: object) -> None:
    """Search compression policies under a latency/memory budget measured on the target.

    Each trial applies a policy (techniques from the space, in stage order), saves the checkpoint, measures it in
    a fresh process, rejects it cheaply when over budget, estimates quality at low fidelity (hopeless ones are
    pruned), then evaluates held-out perplexity. The best feasible policy is exported as OUT/recipe.yaml +
    OUT/checkpoint/. State lives in OUT/study.db: Ctrl-C, then --resume, loses no finished trial; --resume with a
    different model, budget, space, fidelity, sampler, target or runtime is refused and says which.

    Distributed: --backend ray spreads trials over a Ray cluster (--ray-address); or start several
    `autoslm search --storage URL --study NAME` processes (SQLite, journal:PATH, postgresql://...) that split one
    study's trials. A remote device measures through `autoslm agent` (--target http://HOST:PORT).

    Examples:  autoslm search --model smollm2-135m --budget "decode_ms<=0.7x" --trials 12
               autoslm search --runtime llama.cpp --space mixed-precision --budget "size_mb<=Q4_K_M" --trials 30
    (the second gives each weight tensor its own llama.cpp type, at most as large as llama.cpp's Q4_K_M measured
    first on this machine)
    """
    from typer._click.core import ParameterSource

    given = {k: v for k, v in options.items() if ctx.get_parameter_source(k) != ParameterSource.DEFAULT}
    from autoslm.searching import SearchSettings

    settings = SearchSettings.create(**given)  # every option checked before anything is loaded or written
    _quiet_libraries()
    from autoslm import report
    from autoslm.search_view import SearchView
    from autoslm.searching import run_search

    try:
        with SearchView(console, settings.trials) as view:
            result = run_search(settings, resume=resume, progress=view.event)
    except KeyboardInterrupt:
        _interrupted(settings)
        raise typer.Exit(130) from None
    result.report_path, _ = report.write(result.run_dir, result.settings.storage, result.settings.study)
    view.summary(result)
    if result.all_failed:  # nothing was learnt: a script or a scheduler must see it
        raise typer.Exit(1)


app.command("search")(_with_settings_options(_search))


_REPORTED: list[str] = []  # Ctrl-C already explained by the command (search)


def _interrupted(settings: Any) -> None:
    """Ctrl-C: what was kept, the best so far, and the command that continues (the interrupted trial is run again)."""
    import shlex

    from autoslm.searching.trials import best, finished_count, records

    db = RunDir(settings.run_dir).study_db
    done, lead = 0, None
    if settings.storage or db.is_file():
        try:
            import optuna

            study = optuna.load_study(study_name=settings.study, storage=settings.storage or f"sqlite:///{db}")
            done, lead = finished_count(study), best(records(study))
        except Exception:
            pass
    argv = [a for a in sys.argv[1:] if a != "--resume"]
    again = "autoslm " + shlex.join([*argv, "--resume"])
    kept = f"{done} of {settings.trials} trials finished, kept in {settings.storage or db}"
    lead_text = f"; best so far: trial {lead.number} (ppl {lead.ppl:.2f})" if lead is not None else ""
    err.print(f"interrupted: {kept}{lead_text}. Continue with: {again}", highlight=False, soft_wrap=True)
    _REPORTED.append("search")


@app.command()
def apply(
    recipe: Annotated[str, typer.Argument(help="a recipe.yaml written by `autoslm search`")],
    out: Annotated[str, typer.Option(help="directory for the rebuilt checkpoint")],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="base model spec (default: the one the recipe names)")
    ] = None,
    force: Annotated[
        bool, typer.Option(help="apply even if the base model's fingerprint or the rebuilt weights' sha256 differ")
    ] = False,
    f32: Annotated[
        bool,
        typer.Option(
            "--f32",
            help="llama.cpp: also write model-f32.gguf, the F32 export the recipe's stock llama-quantize command "
            "reads (recipe.yaml: stock)",
        ),
    ] = False,
) -> None:
    """Rebuild a compressed checkpoint from its base model and a recipe (same seed, same weights).

    Example:  autoslm apply runs/smollm2-135m/recipe.yaml --out ckpt/
              autoslm apply runs/smollm2-135m/recipe.yaml --out ckpt/ --f32   # then: cd ckpt && llama-quantize ...
    """
    _quiet_libraries()
    from autoslm.checkpoint import sha256_file, weights_file
    from autoslm.recipe import Recipe, apply_recipe

    expected = Recipe.read(recipe).checkpoint_sha256
    with console.status(f"applying {recipe}"):
        directory = apply_recipe(recipe, out, model=model, force=force, f32=f32)
    made = sha256_file(weights_file(directory))
    verdict = (
        "no checkpoint_sha256 in the recipe to compare"
        if not expected
        else "matches the recipe"
        if made == expected
        else f"DIFFERS from the recipe's {expected[:16]}... (--force)"
    )
    console.print(f"checkpoint written to {directory}  ·  {weights_file(directory).name} sha256 {made}  ·  {verdict}")


@app.command()
def plugins(as_json: JsonOpt = False) -> None:
    """List installed plugins (entry point group `autoslm`): their techniques, targets, runtimes, search backends and
    samplers, and load status. The first row, autoslm itself, holds the engine's own targets, runtimes and backends.

    AUTOSLM_PLUGINS=a,b loads only those plugins; AUTOSLM_PLUGINS_STRICT=1 turns plugin failures into errors.
    """
    from autoslm.plugins import get_registry

    reg = get_registry()
    if as_json:
        print(json.dumps([vars(p) for p in reg.plugins.values()], indent=2))
        return
    table = Table(title="autoslm plugins")
    for col in ("plugin", "distribution", "version", "provides", "status"):
        table.add_column(col, overflow="fold")  # a long failure reason wraps, never cut
    for p in reg.plugins.values():
        status = {"loaded": "[green]loaded[/green]", "disabled": "[dim]disabled[/dim]"}.get(
            p.status, "[red]failed[/red] (below)"
        )
        provides = [f"technique {t}" for t in p.techniques] + p.provides
        table.add_row(p.name, p.dist, p.version, ", ".join(provides) or "-", status)
    console.print(table)
    for p in reg.plugins.values():  # reasons in full, one per line: a table cell would cut them
        if p.status == "failed":
            line = f"[red]failed[/red] {escape(f'{p.name} ({p.dist} {p.version}): {p.error}')}"
            console.print(line, highlight=False, soft_wrap=True)


@app.command()
def report(
    run_dir: Annotated[str, typer.Argument(help="the --out directory of `autoslm search` (finished or running)")],
    storage: Annotated[str | None, typer.Option(help="the search's --storage, when it was not the default")] = None,
    study: Annotated[str | None, typer.Option(help="study name inside --storage")] = None,
    out: Annotated[str | None, typer.Option(help="folder to write them into (default: RUN_DIR)")] = None,
) -> None:
    """Write RUN_DIR/report.html (self-contained) and RUN_DIR/pareto.png from the search's study.

    Works while the search is still running: it reads the trials finished so far. A run directory you cannot write
    (read-only, another user's): --out DIR.

    Example:  autoslm report runs/smollm2-135m && xdg-open runs/smollm2-135m/report.html
    """
    from pathlib import Path

    from autoslm import report as _report
    from autoslm.quiet import quiet_libraries

    quiet_libraries(import_transformers=False)
    html_path, png = _report.write(Path(run_dir), storage, study, Path(out) if out else None)
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
    header_timeout_s: Annotated[
        float, typer.Option(help="a connection that sends no complete request head within this is closed")
    ] = 10,
    max_connections: Annotated[
        int, typer.Option(help="open connections before idle ones get 0.5 s to send a request (4x: new ones refused)")
    ] = 1000,
) -> None:
    """Serve measurements on this device for a search running elsewhere (`--target http://HOST:PORT`).

    Uploads are checkpoints as tar archives of safetensors + JSON files (pickles are refused), checked against
    their manifest's sha256 sums, measured one at a time in a fresh process with the same code as the local target.
    Every request but GET /health needs 'Authorization: Bearer TOKEN'. See docs/agent.md for the security model.

    Example:  AUTOSLM_AGENT_TOKEN=$(openssl rand -hex 16) autoslm agent --host 0.0.0.0 --port 8765
    """
    _positive("--max-queue", max_queue)
    if not token or len(token.strip()) < 8 or token != token.strip():
        raise UserError(
            "autoslm agent needs --token (or AUTOSLM_AGENT_TOKEN) of at least 8 characters, without surrounding "
            "spaces (e.g. $(openssl rand -hex 16))"
        )
    if not (0 < max_upload_mb <= 1 << 20 and 0 < timeout_s <= 86400 and max_queue <= 1000 and header_timeout_s > 0
            and 8 <= max_connections <= 100_000):  # fmt: skip
        raise UserError(
            "--max-upload-mb (<= 1048576), --timeout-s (<= 86400), --max-queue (<= 1000) and --header-timeout-s "
            "must be positive, and --max-connections between 8 and 100000"
        )
    from autoslm.targets.agent import Agent, bind, serve

    sock = bind(host, port)  # a port in use is reported before anything else happens
    _quiet_libraries()
    service = Agent(
        token, max_upload_mb=max_upload_mb, max_queue=max_queue, timeout_s=timeout_s, header_timeout_s=header_timeout_s,
        max_connections=max_connections,
    )  # fmt: skip
    fp = service.target.fingerprint()
    console.print(
        f"autoslm agent on {agent_url(host, port)}  ·  device {fp['id']} ({fp['cpu']}, {fp['threads']} threads)  ·  "
        f"uploads <= {max_upload_mb:g} MB  ·  Ctrl-C stops",
        highlight=False,
    )
    serve(service, host=host, port=port, sock=sock)


def agent_url(host: str, port: int) -> str:
    """The URL a client gives as --target: an IPv6 address in brackets (`http://[::1]:8765`)."""
    return f"http://[{host}]:{port}" if ":" in host and not host.startswith("[") else f"http://{host}:{port}"


def _allow_unverified(allow: bool) -> None:
    """--allow-unverified: load an autoslm checkpoint whose manifest is missing (measuring processes inherit it)."""
    if allow:
        from autoslm.checkpoint import ALLOW_UNVERIFIED

        os.environ[ALLOW_UNVERIFIED] = "1"


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
        code = app(args=argv, standalone_mode=False)  # typer turns Ctrl-C into exit code 130, returned here
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
    if code == 130 and not _REPORTED:
        err.print("interrupted")
    return code if isinstance(code, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
