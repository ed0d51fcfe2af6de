"""Which phase of long work is running and how far it has got, for the live view.

The work says it (`with phase("exporting the F32 GGUF"):`, `step(i, n)` inside a loop); whoever shows progress
listens (`listen(callback)`: the search view). Without a listener it costs nothing. One listener per process: trials
that run in Ray workers are not reported here (their results are, as each trial ends).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

Listener = Callable[[str, int | None, int | None, float], None]  # (phase, done, total, seconds since it began)

_listener: Listener | None = None
_current: list[tuple[str, float]] = []  # the phases running, outermost first: (name, start)


@contextlib.contextmanager
def listen(callback: Listener) -> Iterator[None]:
    global _listener
    previous, _listener = _listener, callback
    try:
        yield
    finally:
        _listener = previous


@contextlib.contextmanager
def phase(name: str, total: int | None = None) -> Iterator[None]:
    """Announce `name` for the duration of the block (nested phases read 'outer: inner')."""
    _current.append((name, time.monotonic()))
    _tell(0 if total else None, total)
    try:
        yield
    finally:
        _current.pop()
        if _current:
            _tell(None, None)


def step(done: int, total: int) -> None:
    """How far the innermost phase has got."""
    _tell(done, total)


def _tell(done: int | None, total: int | None) -> None:
    if _listener is None or not _current:
        return
    name = ": ".join(n for n, _ in _current)
    _listener(name, done, total, time.monotonic() - _current[0][1])


__all__ = ["listen", "phase", "step"]
