"""Where autoslm keeps converted models and other derived artefacts (override with AUTOSLM_CACHE)."""

from __future__ import annotations

import os
from pathlib import Path

from autoslm.errors import UserError


def cache_dir(*parts: str) -> Path:
    """A folder of autoslm's cache (AUTOSLM_CACHE, else ~/.cache/autoslm), made on first use; a root that names a
    file or a place nothing can be made is a one-line UserError naming the variable."""
    given = os.environ.get("AUTOSLM_CACHE")
    root = Path(given or Path.home() / ".cache" / "autoslm")
    path = root.joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        where = f"AUTOSLM_CACHE='{given}'" if given else f"the cache folder '{root}'"
        raise UserError(
            f"{where} cannot hold autoslm's cache ({exc.strerror or exc} at '{exc.filename or path}'): "
            "point AUTOSLM_CACHE at a writable folder"
        ) from exc
    return path
