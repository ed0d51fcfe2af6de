"""The importance matrix, computed by llama.cpp itself from a GGUF: what its `llama-imatrix` tool collects.

For every weight that multiplies activations (`MUL_MAT` nodes of llama.cpp's graph whose weight is a block tensor,
`blk.N.*`, or `output.weight`), the mean over the calibration tokens of the squared input of each of its columns.
llama.cpp's graph scheduler calls back (`cb_eval`) before and after each node: the callback asks for matrix
products and reads their input (`src[1]`, float32 in the CPU backend's memory) as it is computed.

It needs no torch model: a quantization-only search works from the F32 GGUF alone (issue #32), and a pruned
candidate is weighed from the GGUF it was exported to, by the runtime that will run it.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

from autoslm.targets import THREADS

GGML_MAX_DIMS = 4
GGML_MAX_SRC = 10
GGML_MAX_NAME = 64
GGML_OBJECT_SIZE = 32  # struct ggml_object: offs, size, next, type, padding[4]
GGML_TYPE_F32 = 0


class GgmlTensor(ctypes.Structure):
    """`struct ggml_tensor` (ggml.h) of the llama.cpp that llama-cpp-python ships; its size is checked against
    `ggml_tensor_overhead()` before the first use (`_lib`)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * GGML_MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


_LIB: list[Any] = []


def _lib() -> Any:
    """ggml's base library, with the two functions used here, and the tensor layout checked."""
    import llama_cpp

    if not _LIB:
        lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
        lib.ggml_op_name.restype = ctypes.c_char_p
        lib.ggml_op_name.argtypes = [ctypes.c_int]
        lib.ggml_tensor_overhead.restype = ctypes.c_size_t
        expected = lib.ggml_tensor_overhead() - GGML_OBJECT_SIZE
        if expected != ctypes.sizeof(GgmlTensor):
            raise RuntimeError(
                f"llama-cpp-python {llama_cpp.__version__}: struct ggml_tensor is {expected} bytes, autoslm's copy "
                f"{ctypes.sizeof(GgmlTensor)}: update autoslm/llamacpp/imatrix.py to this ggml.h"
            )
        _LIB.append(lib)
    return _LIB[0]


def weight_name(raw: bytes) -> str:
    """A weight's GGUF name from a graph tensor's name: the scheduler names its copies `BACKEND#name#N`."""
    name = raw.decode("utf-8", "replace")
    return name.split("#")[1] if "#" in name else name


def collected(name: str) -> bool:
    """What llama.cpp's imatrix tool keeps (with its `--process-output`): block weights and the output projection."""
    return name.startswith("blk.") or name == "output.weight"


class Collector:
    """The `cb_eval` callback: sums of squared inputs per weight column, and how many input rows were summed."""

    def __init__(self) -> None:
        self.lib = _lib()
        self.matmul = {op for op in range(128) if (self.lib.ggml_op_name(op) or b"") == b"MUL_MAT"}
        self.sums: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self.error: BaseException | None = None
        self.callback = _eval_callback_type()(self._call)  # kept alive as long as the collector

    def _call(self, pointer: int, ask: bool, _user: Any) -> bool:
        try:
            t = GgmlTensor.from_address(pointer)
            if t.op not in self.matmul or not t.src[0] or not t.src[1]:
                return not ask  # not wanted; after a compute, go on
            src0, src1 = GgmlTensor.from_address(t.src[0]), GgmlTensor.from_address(t.src[1])
            name = weight_name(src0.name)
            if ask:
                return collected(name) and src1.type == GGML_TYPE_F32
            self._add(name, src1)
            return True
        except BaseException as exc:  # an exception cannot cross into C: cancel the graph, re-raised by `run`
            self.error = exc
            return False

    def _add(self, name: str, x: GgmlTensor) -> None:
        import numpy as np

        ne, nb = list(x.ne), list(x.nb)
        if nb[0] != 4:
            raise RuntimeError(f"{name}: input of {nb[0]}-byte columns, expected float32")
        span = sum((n - 1) * s for n, s in zip(ne[1:], nb[1:], strict=True)) + ne[0] * 4
        buf = (ctypes.c_char * span).from_address(x.data)
        rows = np.ndarray(shape=(ne[3], ne[2], ne[1], ne[0]), dtype=np.float32, buffer=buf,
                          strides=(nb[3], nb[2], nb[1], nb[0])).reshape(-1, ne[0])  # fmt: skip
        sq = np.einsum("ij,ij->j", rows, rows, dtype=np.float64)
        if name in self.sums and self.sums[name].shape != sq.shape:
            raise RuntimeError(f"{name}: inputs of {sq.shape[0]} and {self.sums[name].shape[0]} columns")
        self.sums[name] = self.sums[name] + sq if name in self.sums else sq
        self.counts[name] = self.counts.get(name, 0) + rows.shape[0]

    def means(self) -> dict[str, Any]:
        import numpy as np

        return {n: (s / self.counts[n]).astype(np.float32) for n, s in sorted(self.sums.items())}


def _eval_callback_type() -> Any:
    import llama_cpp

    return llama_cpp.ggml_backend_sched_eval_callback


def importance_matrix(gguf: Path, windows: list[list[int]], threads: int = THREADS) -> dict[str, Any]:
    """For each weight (by its GGUF name), the mean over the tokens of `windows` (token id lists, each decoded as
    one sequence from an empty cache, every position's logits computed so that every block sees every token) of
    the squared input of each of its columns: float32 vectors, as `llama_model_quantize` takes them."""
    import llama_cpp
    from llama_cpp import _internals

    from autoslm.runtimes.llamacpp import _quiet, _stderr_to

    if not windows:
        raise ValueError("no calibration windows")
    longest = max(len(w) for w in windows)
    collector = Collector()
    _quiet()
    with _stderr_to(Path(os.devnull)):
        params = llama_cpp.llama_model_default_params()
        model = _internals.LlamaModel(path_model=str(gguf), params=params, verbose=False)
    try:
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = longest
        cparams.n_seq_max = 1
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.cb_eval = collector.callback
        cparams.cb_eval_user_data = None
        with _stderr_to(Path(os.devnull)):
            ctx = _internals.LlamaContext(model=model, params=cparams, verbose=False)
        batch = _internals.LlamaBatch(n_tokens=longest, embd=0, n_seq_max=1, verbose=False)
        try:
            for window in windows:
                ctx.kv_cache_clear()
                b = batch.batch
                b.n_tokens = len(window)
                for j, token in enumerate(window):
                    b.token[j], b.pos[j], b.n_seq_id[j], b.logits[j] = token, j, 1, True
                    b.seq_id[j][0] = 0
                try:
                    ctx.decode(batch)
                except Exception:
                    if collector.error is not None:
                        raise collector.error from None
                    raise
                if collector.error is not None:
                    raise collector.error
        finally:
            batch.close()
            ctx.close()
    finally:
        model.close()
    if not collector.sums:
        raise RuntimeError(f"llama.cpp computed no matrix product of a block weight in {gguf}")
    return collector.means()
