"""Imported first by the measuring fork server (`forkserver.py`), and only there: the server's own output (what
torch, transformers and their plugins print while they are imported) goes to /dev/null rather than to the terminal
of the search that started it. Each measuring child sends its output to a log of its own."""

from __future__ import annotations

import os

from autoslm.quiet import quiet_libraries

_null = os.open(os.devnull, os.O_WRONLY)
os.dup2(_null, 1)
os.dup2(_null, 2)
os.close(_null)
quiet_libraries(import_transformers=False)
