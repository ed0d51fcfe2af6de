"""The converting process: llama.cpp's own converter (`conversion.<module>.<Class>`) on one checkpoint directory.

Run as `python -m autoslm.llamacpp.driver ROOT DIRECTORY DEST DTYPE|VOCAB [EXTRAS-JSON]`, by this package only.
It runs in a process of its own so that the converter's gguf-py (ROOT/gguf-py, the runtime's commit) is the `gguf`
it imports, whatever `gguf` the calling process has loaded, and so that its memory is returned when it ends.
A failure the user can act on is printed as one line starting with `autoslm-error:` and exits 2.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

ERROR = "autoslm-error:"


def convert(root: Path, directory: Path, dest: Path, dtype: str, extras: dict[str, Any]) -> None:
    sys.path[:0] = [str(root / "gguf-py"), str(root)]
    import gguf  # the converter's own gguf-py

    if not Path(gguf.__file__).resolve().is_relative_to((root / "gguf-py").resolve()):
        raise RuntimeError(f"gguf was imported from {gguf.__file__}, not from the converter's gguf-py")
    import torch
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class

    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")
    ftype = {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
             "BF16": gguf.LlamaFileType.MOSTLY_BF16}.get(dtype, gguf.LlamaFileType.ALL_F32)  # fmt: skip
    with torch.inference_mode(), tempfile.TemporaryDirectory(prefix="autoslm-card-") as tmp:
        card = Path(tmp)
        hparams = ModelBase.load_hparams(directory, False)
        arch = get_model_architecture(hparams, ModelType.TEXT)
        cls = get_model_class(arch)
        model = cls(directory, ftype, dest, model_name="autoslm-export", small_first_shard=False)
        # the converter guesses general.* metadata (name, finetune, size label) from the folder's name and model card;
        # a checkpoint's folder is often a temporary one, so it reads an empty folder of a fixed name instead: the same
        # weights give the same bytes wherever they are written from
        model.dir_model_card = card / "autoslm-export"
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


def main(argv: list[str]) -> int:
    root, directory, dest, dtype = Path(argv[0]), Path(argv[1]), Path(argv[2]), argv[3]
    extras = json.loads(argv[4]) if len(argv) > 4 else {}
    try:
        convert(root, directory, dest, dtype, extras)
    except (NotImplementedError, FileNotFoundError) as exc:  # the converter's "not this model / tokenizer"
        print(f"{ERROR} {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
