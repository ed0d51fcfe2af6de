"""Where llama.cpp's own HF -> GGUF converter comes from: the source distribution of the llama-cpp-python that runs
the models (`vendor/llama.cpp`: `conversion/`, one class per architecture, and its `gguf-py`), so every GGUF
autoslm writes is written by the converter of the same llama.cpp commit as the runtime that loads it.

The sdist is a registry package (pip's cache already holds it after installing llama-cpp-python). Only the
converter's files are kept, once per llama-cpp-python version, under the cache (`AUTOSLM_CACHE`), or taken from
`AUTOSLM_LLAMA_CPP_SRC` (a llama.cpp source tree, e.g. an unpacked sdist's `vendor/llama.cpp`).
Run `python -m autoslm.llamacpp.source` to fetch it ahead of time (`make setup` does).
"""

from __future__ import annotations

import ast
import functools
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

from autoslm.cache import cache_dir
from autoslm.errors import UserError

PACKAGE = "llama-cpp-python"
# what a converter tree holds (relative to llama.cpp's root): the entry script, the architecture classes, gguf-py
KEEP = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/", "LICENSE")
ENV = "AUTOSLM_LLAMA_CPP_SRC"


def runtime_version() -> str:
    """The installed llama-cpp-python's version (the runtime whose converter is used)."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError as exc:
        raise UserError(f"{PACKAGE} is not installed: run `make setup` (or pip install -e .)") from exc


def converter_root() -> Path:
    """The llama.cpp tree holding `conversion/` and `gguf-py/` (fetched once from the runtime's sdist)."""
    override = os.environ.get(ENV)
    if override:
        root = Path(override).expanduser()
        if not (root / "conversion" / "__init__.py").is_file() or not (root / "gguf-py" / "gguf").is_dir():
            raise UserError(
                f"{ENV}='{override}' holds no llama.cpp converter (conversion/ and gguf-py/): fix or unset it"
            )
        return root
    version = runtime_version()
    root = cache_dir("converter") / f"llama.cpp-{version}"
    if (root / ".complete").is_file():
        return root
    return _fetch(version, root)


def _fetch(version: str, root: Path) -> Path:
    """Download the sdist of llama-cpp-python==version with pip and keep only the converter's files."""
    print(f"autoslm: fetching llama.cpp's converter from the {PACKAGE}=={version} source package (once)",
          file=sys.stderr)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="autoslm-sdist-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d", tmp,
               f"{PACKAGE}=={version}"]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        archives = list(Path(tmp).glob("*.tar.gz"))
        if done.returncode or not archives:
            last = (done.stderr.strip().splitlines() or ["no archive"])[-1][:200]
            raise UserError(
                f"could not fetch llama.cpp's converter ({PACKAGE}=={version} sdist: {last}): connect to the package "
                f"index once, or set {ENV} to an unpacked llama.cpp source tree of that version"
            )
        staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}-"))
        try:
            with tarfile.open(archives[0]) as tar:
                for member in tar.getmembers():
                    rel = _converter_path(member.name)
                    if rel is None or not (member.isfile() or member.isdir()):
                        continue
                    member.name = rel
                    tar.extract(member, staging, filter="data")
            if not (staging / "conversion" / "__init__.py").is_file():
                raise UserError(f"the {PACKAGE}=={version} sdist holds no vendor/llama.cpp/conversion: "
                                f"set {ENV} to a llama.cpp source tree")  # fmt: skip
            (staging / ".complete").write_text(version)
            shutil.rmtree(root, ignore_errors=True)
            os.replace(staging, root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return root


def _converter_path(name: str) -> str | None:
    """`llama_cpp_python-X/vendor/llama.cpp/conversion/llama.py` -> `conversion/llama.py`; None for other files."""
    parts = name.split("/")
    if len(parts) < 4 or parts[1:3] != ["vendor", "llama.cpp"]:
        return None
    rel = "/".join(parts[3:])
    return rel if any(rel == k or (k.endswith("/") and rel.startswith(k)) for k in KEEP) else None


@functools.cache
def text_architectures(root: Path | None = None) -> dict[str, str]:
    """The converter's table of text architectures (Hugging Face name -> its module), read from the source
    without importing it (no torch, no gguf-py): what can be decided from config.json before any work."""
    root = root or converter_root()
    tree = ast.parse((root / "conversion" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        target = (
            node.target
            if isinstance(node, ast.AnnAssign)
            else (node.targets[0] if isinstance(node, ast.Assign) else None)
        )
        if isinstance(target, ast.Name) and target.id == "TEXT_MODEL_MAP" and node.value is not None:
            return dict(ast.literal_eval(node.value))
    raise UserError(f"llama.cpp converter at '{root}' has no TEXT_MODEL_MAP: a different llama.cpp layout")


if __name__ == "__main__":
    print(converter_root())
