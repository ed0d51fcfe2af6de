"""What stock llama.cpp needs to make the same GGUF from the F32 export: the `llama-quantize` command line, the
importance matrix in llama.cpp's own `imatrix.gguf` format, and the per-tensor types as a `--tensor-type-file`.

The llama.cpp runtime writes these beside every GGUF it quantizes (`write`), and an exported recipe carries the
command (`Recipe.stock`). They are not part of the model (an agent never receives them): they let anyone check the
result with the tools they already use, `llama-quantize` built from the same llama.cpp as the runtime.

The importance matrix is written as llama.cpp's `llama-imatrix` writes it (`general.type` imatrix, `imatrix.datasets`,
`imatrix.chunk_count`, `imatrix.chunk_size`, and per weight a `NAME.in_sum2` and a `NAME.counts` tensor). The sums
are stored already divided by their token counts, with counts of 1: `llama-quantize` divides the sums by the counts,
so it then weighs each column by exactly the float32 value autoslm quantized with.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

IMATRIX_FILE = "imatrix.gguf"
TYPES_FILE = "tensor-types.txt"
F32_FILE = "model-f32.gguf"  # the F32 export the command reads (`autoslm` writes it; see docs/recipe.md)
MANIFEST_KEY = "llama_quantize"  # where a checkpoint's manifest records the command
FILES = (IMATRIX_FILE, TYPES_FILE, F32_FILE)  # beside the model, outside its manifest: never uploaded to an agent


def write(
    directory: Path, config: dict[str, Any], imatrix: dict[str, Any] | None, pattern: Any, output: str
) -> str:  # fmt: skip
    """Write the importance matrix and the tensor-type file a `llama-quantize` run needs into `directory`, and
    return its command line (F32_FILE -> `output`). `config`: the runtime's quantize settings; `pattern`: a tensor
    class or name -> llama.cpp's regex for it, as the runtime gives llama.cpp itself."""
    directory = Path(directory)
    for name in (IMATRIX_FILE, TYPES_FILE):
        (directory / name).unlink(missing_ok=True)
    args = ["llama-quantize"]
    if imatrix:
        chunks, size = int(config["imatrix_samples"]), int(config["imatrix_seq_len"])
        write_imatrix(directory / IMATRIX_FILE, imatrix, chunks=chunks, size=size)
        args += ["--imatrix", IMATRIX_FILE]
    if config.get("output_type"):
        args += ["--output-tensor-type", str(config["output_type"]).lower()]
    if config.get("token_embd_type"):
        args += ["--token-embedding-type", str(config["token_embd_type"]).lower()]
    overrides = sorted((config.get("overrides") or {}).items())
    if overrides:
        lines = [f"{pattern(tensor)}={kind.lower()}" for tensor, kind in overrides]
        (directory / TYPES_FILE).write_text("\n".join(lines) + "\n")
        args += ["--tensor-type-file", TYPES_FILE]
    return shlex.join([*args, F32_FILE, output, str(config["type"])])


def recorded(directory: Path) -> dict[str, str]:
    """What a checkpoint holds for stock llama.cpp (for the recipe): the command its manifest records and the files
    it names; empty for a checkpoint that llama.cpp did not quantize."""
    import json

    from autoslm.checkpoint import MANIFEST

    try:
        command = json.loads((Path(directory) / MANIFEST).read_text()).get(MANIFEST_KEY)
    except (OSError, ValueError, AttributeError):
        return {}
    if not isinstance(command, str):
        return {}
    files = [name for name in (IMATRIX_FILE, TYPES_FILE) if (Path(directory) / name).is_file()]
    return {MANIFEST_KEY: command, "from": F32_FILE, **({"files": ", ".join(files)} if files else {})}


def write_imatrix(path: Path, means: dict[str, Any], chunks: int, size: int) -> Path:
    """`means` (GGUF weight name -> mean squared input per column) as llama.cpp's imatrix.gguf."""
    import numpy as np
    from gguf import GGUFWriter

    from autoslm import data

    writer = GGUFWriter(str(path), arch="imatrix")
    writer.add_type("imatrix")
    writer.add_array("imatrix.datasets", [f"autoslm calibration corpus sha256:{data.corpus_sha256('calibration')}"])
    writer.add_uint32("imatrix.chunk_count", chunks)
    writer.add_uint32("imatrix.chunk_size", size)
    for name, values in sorted(means.items()):
        writer.add_tensor(f"{name}.in_sum2", np.ascontiguousarray(values, dtype=np.float32))
        writer.add_tensor(f"{name}.counts", np.ones(1, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def read_imatrix(path: Path) -> dict[str, Any]:
    """An imatrix.gguf back as llama-quantize reads it: weight name -> in_sum2 / counts (float32)."""
    import numpy as np
    from gguf import GGUFReader

    tensors = {t.name: np.array(t.data, dtype=np.float32) for t in GGUFReader(str(path)).tensors}
    return {
        name.removesuffix(".in_sum2"): values / tensors[name.removesuffix(".in_sum2") + ".counts"][0]
        for name, values in tensors.items()
        if name.endswith(".in_sum2")
    }


__all__ = ["F32_FILE", "FILES", "IMATRIX_FILE", "TYPES_FILE", "read_imatrix", "recorded", "write", "write_imatrix"]
