"""llama.cpp, through llama-cpp-python, on its reference CPU kernels: how lit-unlearn runs a ``.gguf`` file.

``load_llama`` opens a file with llama.cpp's *extra buffer types* off. Those are weight layouts a CPU
backend may substitute at load (repacked blocks for wider SIMD; on CPUs with AMX tiles, ggml's AMX matmul).
They change how the products are summed, and ggml's AMX path built by a native ``pip install`` on a
Sapphire Rapids CPU crashes in ``ggml_backend_amx_mul_mat`` under llama-cpp-python 0.3.36. The plain path
is what every machine computes alike; what a file deploys (its codes and scales) is the same either way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["load_llama"]


def load_llama(path: str | Path, **kwargs: Any) -> Any:
    """``llama_cpp.Llama(model_path=path, **kwargs)`` with llama.cpp's extra buffer types off (see above).

    Raises:
        ImportError: without llama-cpp-python (``pip install "lit-unlearn[llama]"``).
    """
    try:
        from llama_cpp import llama as llama_module
    except ImportError as error:
        raise ImportError(
            'Running a .gguf file needs llama-cpp-python: pip install "lit-unlearn[llama]".'
        ) from error
    with _plain_buffers(llama_module):
        return llama_module.Llama(model_path=str(path), **kwargs)


@contextlib.contextmanager
def _plain_buffers(llama_module: Any) -> Iterator[None]:
    # `Llama.__init__` starts from `llama_model_default_params()` and sets the fields it knows; the extra
    # buffer types are not among them, so the defaults are wrapped while it loads.
    bindings = llama_module.llama_cpp
    default = bindings.llama_model_default_params

    def params() -> Any:
        p = default()
        if hasattr(p, "use_extra_bufts"):
            p.use_extra_bufts = False
        return p

    bindings.llama_model_default_params = params
    try:
        yield
    finally:
        bindings.llama_model_default_params = default
