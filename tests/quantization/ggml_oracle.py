"""ggml itself as the oracle of the GGUF quantizers: ``ggml_quantize_chunk`` from llama-cpp-python's libraries.

llama-cpp-python (the ``test`` extra) ships ggml's shared libraries; ``ggml_quantize_chunk`` there runs
``quantize_row_*_ref`` when no importance matrix is given, the quantizer ``llama-quantize`` uses. A missing
library is an error, never a skip: the bit-exactness tests are the point of the GGUF formats.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numpy as np

from lit_unlearn.quantization.gguf_bytes import BLOCK_BYTES, BLOCK_WEIGHTS, GGML_TYPE


@functools.cache
def _library() -> ctypes.CDLL:
    try:
        import llama_cpp
    except ImportError as err:
        raise RuntimeError(
            "The ggml oracle needs llama-cpp-python (pip install 'lit-unlearn[test]'); it ships libggml-base."
        ) from err
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    candidates = sorted(lib_dir.glob("libggml-base.*")) + sorted(lib_dir.glob("libggml.*"))
    for path in candidates:
        lib = ctypes.CDLL(str(path))
        if hasattr(lib, "ggml_quantize_chunk"):
            lib.ggml_quantize_chunk.restype = ctypes.c_size_t
            lib.ggml_quantize_chunk.argtypes = [
                ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                ctypes.c_void_p,
            ]
            lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
            lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
            return lib
    raise RuntimeError(f"No ggml library with ggml_quantize_chunk under {lib_dir} (found {candidates}).")


def ggml_quantize(weight: np.ndarray, name: str) -> np.ndarray:
    """ggml's own bytes for fp32 ``weight`` ``(rows, row_len)`` in format ``name``: ``(rows, bytes_per_row)``."""
    lib = _library()
    ggml_type = GGML_TYPE[name]
    if lib.ggml_quantize_requires_imatrix(ggml_type):
        raise RuntimeError(f"ggml says {name!r} needs an importance matrix; the oracle runs without one.")
    x = np.ascontiguousarray(weight, dtype=np.float32).reshape(-1, weight.shape[-1])
    rows, row_len = x.shape
    row_bytes = row_len // BLOCK_WEIGHTS[name] * BLOCK_BYTES[name]
    out = np.zeros((rows, row_bytes), dtype=np.uint8)
    written = lib.ggml_quantize_chunk(ggml_type, x.ctypes.data, out.ctypes.data, 0, rows, row_len, None)
    assert written == out.size, (written, out.size)
    return out


_FTYPES = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M"}


def llama_quantize(source: Path, target: Path, mixture: str) -> dict[str, str]:
    """``llama-quantize source target Q4_K_M`` through llama.cpp's own ``llama_model_quantize`` (default
    parameters, one thread, no importance matrix); returns each tensor's stored type as ``gguf`` reads it
    back, lower case (``"q6_k"``, ``"f16"``, ``"f32"``)."""
    import gguf
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, _FTYPES[mixture])
    params.nthread = 1
    _quiet_llama_log()
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if status != 0:
        raise RuntimeError(f"llama_model_quantize({source}, {mixture}) returned {status}.")
    return {t.name: t.tensor_type.name.lower() for t in gguf.GGUFReader(target).tensors}


@functools.cache
def _quiet_llama_log() -> ctypes.CFUNCTYPE:
    # llama.cpp prints a line per tensor; the callback must outlive every call, hence the cache.
    import llama_cpp

    callback = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)(lambda level, text, data: None)
    llama_cpp.llama_log_set(callback, None)
    return callback
