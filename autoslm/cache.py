"""Where autoslm keeps converted models and other derived artefacts (override with AUTOSLM_CACHE)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("AUTOSLM_CACHE") or Path.home() / ".cache" / "autoslm")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
