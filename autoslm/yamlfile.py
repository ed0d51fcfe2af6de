"""Reading the YAML files users hand to autoslm (search spaces, recipes): bounded and plain.

A file over `MAX_BYTES` is refused before it is read; aliases (`*name`) are refused while parsing, so an alias bomb
(a few lines that expand to gigabytes) costs nothing; a file that is not UTF-8, a folder, or a missing path is a
one-line UserError naming it. Nothing autoslm writes needs aliases or more than a few kilobytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from autoslm.errors import UserError

MAX_BYTES = 1 << 20  # 1 MiB


class _NoAliases(yaml.SafeLoader):
    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"YAML aliases (*{event.anchor}) are not accepted", event.start_mark
            )
        return super().compose_node(parent, index)


def read_yaml(path: Path | str, what: str) -> Any:
    """Parse the YAML file at `path`; `what` names it in errors ("recipe", "search space")."""
    path = Path(path)
    try:
        if path.is_dir():
            raise UserError(f"{what} '{path}' is a folder: give the path of a YAML file")
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise UserError(f"{what} '{path}' is {size:,} bytes; at most {MAX_BYTES:,} are accepted")
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError as exc:
        raise UserError(f"{what} '{path}' does not exist: check the path") from exc
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} '{path}' is not UTF-8 text (byte {exc.start}): save it as UTF-8 YAML") from exc
    except OSError as exc:
        raise UserError(f"{what} '{path}' cannot be read: {exc.strerror or exc}") from exc
    try:
        return yaml.load(text, Loader=_NoAliases)
    except yaml.YAMLError as exc:
        raise UserError(f"{what} '{path}' is not valid YAML ({' '.join(str(exc).split())[:200]}); fix it") from exc
