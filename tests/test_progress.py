"""Progress that tells: the work names its phase and how far it got; the live view shows it, and says it every
HEARTBEAT_S where no live bar is drawn (a pipe)."""

from __future__ import annotations

import io
import time

from rich.console import Console

from autoslm import progress


def test_phases_nest_and_report_how_far_they_got() -> None:
    heard: list[tuple[str, int | None, int | None]] = []
    listener = progress.listen(lambda name, done, total, s: heard.append((name, done, total)))
    with listener, progress.phase("trial 3: saving"), progress.phase("quantizing", total=4):
        progress.step(2, 4)
    assert heard == [("trial 3: saving", None, None), ("trial 3: saving: quantizing", 0, 4),
                     ("trial 3: saving: quantizing", 2, 4), ("trial 3: saving", None, None)]  # fmt: skip
    with progress.phase("nobody listens"):  # no listener: nothing happens
        progress.step(1, 1)


def test_a_view_writing_to_a_pipe_says_the_running_phase_every_heartbeat(monkeypatch) -> None:
    from autoslm.search_view import SearchView

    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    monkeypatch.setattr(SearchView, "HEARTBEAT_S", 0.2)
    with SearchView(console, trials=2), progress.phase("trial 1: evaluating"):
        time.sleep(0.7)
    text = out.getvalue()
    assert "  ... trial 1: evaluating (for " in text, text
