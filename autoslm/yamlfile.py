"""Reading the YAML files users hand to autoslm (search spaces, recipes): bounded and plain.

A file over `MAX_BYTES` is refused before it is read; aliases (`*name`) are refused while parsing, so an alias bomb
(a few lines that expand to gigabytes) costs nothing; so are nesting deeper than `MAX_DEPTH` (50k nested lists
overflowed Python's recursion) and a key given twice in one mapping (the last one would win silently); a file that
is not UTF-8, a folder, a FIFO or device (it would never end), or a missing path is a one-line UserError naming it.
Nothing autoslm writes needs aliases, more than a few levels or more than a few kilobytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from autoslm.errors import UserError

MAX_BYTES = 1 << 20  # 1 MiB
MAX_DEPTH = 64  # nested mappings and lists; a search space uses 4


class _NoAliases(yaml.SafeLoader):
    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"YAML aliases (*{event.anchor}) are not accepted", event.start_mark
            )
        if self._depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nesting deeper than {MAX_DEPTH} levels is not accepted", self.peek_event().start_mark
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) or key is None:
                if key in seen:
                    why = f"key '{key}' is given twice in one mapping (the last would win)"
                    raise yaml.constructor.ConstructorError(None, None, why, key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path | str, what: str) -> Any:
    """Parse the YAML file at `path`; `what` names it in errors ("recipe", "search space")."""
    path = Path(path)
    try:
        if path.is_dir():
            raise UserError(f"{what} '{path}' is a folder: give the path of a YAML file")
        if path.exists() and not path.is_file():
            raise UserError(f"{what} '{path}' is not a regular file (a FIFO or a device never ends): give a YAML file")
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
