"""llama.cpp's number formats by their usual names, derived from gguf-py's tables (`GGMLQuantizationType`,
`LlamaFileType`, `GGML_QUANT_SIZES`), never copied by hand.

    FTYPES        whole-model types (`llama_ftype`, what `llama-quantize TYPE` takes): "Q4_K_M" -> 15
    TENSOR_TYPES  tensor types (`ggml_type`): "Q4_K" -> 12
    TYPE_BITS     bits per weight of a tensor type (block bytes x 8 / block values): "Q4_K" -> 4.5
"""

from __future__ import annotations

import gguf

TENSOR_TYPES: dict[str, int] = {t.name: int(t.value) for t in gguf.GGMLQuantizationType}
TYPE_BITS: dict[str, float] = {
    t.name: size * 8 / block for t, (block, size) in gguf.GGML_QUANT_SIZES.items() if block and size
}
FTYPES: dict[str, int] = {
    f.name.removeprefix("MOSTLY_"): int(f.value) for f in gguf.LlamaFileType if f.name.startswith("MOSTLY_")
}
# a k-quant needs rows of a multiple of 256 values; for other rows llama.cpp falls back to these (its own table in
# src/llama-quant.cpp, which gguf-py does not carry)
K_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
