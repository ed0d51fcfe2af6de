"""The converting process: llama.cpp's own converter (`conversion.<module>.<Class>`) on checkpoint directories.

Started as `python -m autoslm.llamacpp.driver ROOT` by `autoslm.llamacpp.converter` only, it serves one request per
line on standard input (JSON: directory, dest, dtype or "VOCAB", extras) and answers each with one line starting
with `autoslm-reply:` on standard output. It runs in a process of its own so that the converter's gguf-py
(ROOT/gguf-py, the runtime's commit) is the `gguf` it imports, whatever `gguf` the calling process has loaded; it
stays up for the calling process's lifetime, so torch, transformers and the converter are imported once.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

REPLY = "autoslm-reply:"


def setup(root: Path) -> None:
    """Import the converter with its own gguf-py first on the path (checked)."""
    sys.path[:0] = [str(root / "gguf-py"), str(root)]
    import gguf

    if not Path(gguf.__file__).resolve().is_relative_to((root / "gguf-py").resolve()):
        raise RuntimeError(f"gguf was imported from {gguf.__file__}, not from the converter's gguf-py")
    import conversion  # noqa: F401  (torch and transformers with it)

    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")


def convert(directory: Path, dest: Path, dtype: str, extras: dict[str, Any]) -> None:
    import gguf
    import torch
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class

    ftype = {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
             "BF16": gguf.LlamaFileType.MOSTLY_BF16}.get(dtype, gguf.LlamaFileType.ALL_F32)  # fmt: skip
    extras = dict(extras)
    with torch.inference_mode(), tempfile.TemporaryDirectory(prefix="autoslm-card-") as tmp:
        hparams = ModelBase.load_hparams(directory, False)
        cls = get_model_class(get_model_architecture(hparams, ModelType.TEXT))
        model = cls(directory, ftype, dest, model_name="autoslm-export", small_first_shard=False)
        # the converter guesses general.* metadata (name, finetune, size label) from the folder's name and model card;
        # a checkpoint's folder is often a temporary one, so it reads an empty folder of a fixed name instead: the same
        # weights give the same bytes wherever they are written from
        model.dir_model_card = Path(tmp) / "autoslm-export"
        model.dir_model_card.mkdir()
        vocab = extras.pop("__vocab__", None)
        if vocab:  # the converter's own reader, chosen by autoslm's glue (architectures.py)
            model.set_vocab = getattr(model, vocab)
        if dtype == "VOCAB":  # a check only: the vocabulary as the converter reads it (pre-tokenizer by hash)
            model.set_vocab()
            return
        model.prepare_tensors()
        model.prepare_metadata(vocab_only=False)
        for method, value in extras.items():  # autoslm's glue for compressed shapes (architectures.py)
            getattr(model.gguf_writer, method)(value)
        model.gguf_writer.write_header_to_file(path=dest)
        model.gguf_writer.write_kv_data_to_file()
        model.gguf_writer.write_tensors_to_file(progress=False)
        model.gguf_writer.close()


def answer(request: dict[str, Any]) -> dict[str, Any]:
    try:
        convert(Path(request["directory"]), Path(request["dest"]), request["dtype"], request.get("extras") or {})
    except (NotImplementedError, FileNotFoundError) as exc:  # the converter's "not this model / tokenizer"
        return {"ok": False, "user": True, "error": " ".join(str(exc).split())}
    except Exception as exc:  # a failure of the converter itself: its traceback for the caller's log
        return {"ok": False, "user": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
    finally:
        gc.collect()
    return {"ok": True}


def serve(root: Path) -> None:
    setup(root)
    print(REPLY, json.dumps({"ok": True, "ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip():
            print(REPLY, json.dumps(answer(json.loads(line))), flush=True)


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
