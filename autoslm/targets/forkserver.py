"""Measuring processes forked from a server that has imported the runtime's libraries once.

A measurement runs in a process of its own (`local.py` says why). Started with `python -m autoslm.targets.worker`,
the torch runtime's process spends ~5 s importing torch and transformers before it loads a model of a few MB: most
of a small model's trial. A runtime that names `Runtime.preload` modules is instead measured in a child of Python's
`multiprocessing` fork server, which imports them once per search (or agent): each measurement is still a new
process that has never run a model, with nothing of the search in it, and its memory figure is still the peak
resident memory during use minus the resident memory just before loading (`measure.measure_loaded`). It starts in
~0.1 s. The server holds the libraries' memory once (353 MB here for torch and transformers), beside the search.

The server is started by the first such measurement and lives as long as the process that started it; it exits
when that process dies, and each child is killed when the server dies (`local.die_with_parent`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

_CONTEXT: multiprocessing.context.BaseContext | None = None
_PRELOADED: tuple[str, ...] = ()


def context(preload: list[str]) -> multiprocessing.context.BaseContext:
    """The fork-server context, its server importing `preload` when it starts (the first call's list is the one
    kept: a server imports once). `autoslm.targets.forkserver_quiet` goes first, so that what the imports print
    stays out of the user's terminal."""
    global _CONTEXT, _PRELOADED
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _PRELOADED = ("autoslm.targets.forkserver_quiet", "autoslm.targets.worker", *preload)
        _CONTEXT.set_forkserver_preload(list(_PRELOADED))
    return _CONTEXT


def run(args: list[str], preload: list[str], timeout_s: float) -> tuple[int | None, str]:
    """Run `autoslm.targets.worker.main(args)` in a forked child; (exit code, what it printed). Exit code None: it
    was still running after `timeout_s` and has been killed. A negative code is the signal that ended it."""
    ctx = context(preload)
    fd, log = tempfile.mkstemp(prefix="autoslm-measure-", suffix=".log")
    os.close(fd)
    try:
        state = (dict(os.environ), os.getcwd())  # as a new process would start: today's environment and folder
        child = ctx.Process(target=_child, args=(args, log, state), name="autoslm-measure")
        with _main_hidden():
            child.start()
        try:
            child.join(timeout_s)
            code = child.exitcode
        finally:  # past its limit, or the caller interrupted (Ctrl-C): the child goes too
            if child.exitcode is None:
                child.kill()
                child.join()
        return code, Path(log).read_text(errors="replace")
    finally:
        Path(log).unlink(missing_ok=True)


@contextlib.contextmanager
def _main_hidden() -> Iterator[None]:
    """While a child is started: multiprocessing would have the child import the caller's `__main__` (its script, as
    `__mp_main__`), which runs a script's top level again unless it is guarded by `if __name__ == "__main__"`.
    The child needs nothing from it (its work is `_child`, in this module), so it is not told of it."""
    main = sys.modules.get("__main__")
    saved = {name: main.__dict__[name] for name in ("__file__", "__spec__") if main and name in main.__dict__}
    if main is not None:
        main.__dict__.pop("__file__", None)
        main.__spec__ = None
    try:
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)


def _child(args: list[str], log: str, state: tuple[dict[str, str], str]) -> None:
    """In the forked child: the caller's environment and folder, its output to `log`, death with the server; then
    the measurement."""
    from autoslm.targets.local import die_with_parent
    from autoslm.targets.worker import main

    environment, folder = state
    os.environ.clear()
    os.environ.update(environment)
    os.chdir(folder)
    out = os.open(log, os.O_WRONLY | os.O_TRUNC)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    die_with_parent()
    try:
        code = main(args)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    raise SystemExit(code)
