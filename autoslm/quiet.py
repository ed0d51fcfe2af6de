"""Keep third-party progress bars and import-time warnings out of autoslm's output."""

from __future__ import annotations

import logging
import os
import sys
import warnings

NOISY_LOGGERS = ("torchao", "torch.utils._pytree", "neural_compressor", "accelerate")


def quiet_libraries(import_transformers: bool = True) -> None:
    """Silence the noisy libraries. `import_transformers=False` (a measuring process): transformers is silenced only
    if something has imported it already, so a llama.cpp measurement never loads it (~1 s and ~300 MB)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("LOGLEVEL", "ERROR")  # neural-compressor reads it for its own logger
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*TracerWarning.*")
    warnings.filterwarnings("ignore", module="transformers.integrations.sdpa_attention")
    warnings.filterwarnings("ignore", module="transformers.masking_utils")
    warnings.filterwarnings("ignore", module="transformers.cache_utils")
    warnings.filterwarnings("ignore", message=r".*(is experimental \(supported from|is an experimental feature)")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if import_transformers or "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
