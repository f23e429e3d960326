"""GGUF, llama.cpp's file format, as lit-unlearn's input and output.

:func:`load_causal_lm` / :func:`load_tokenizer` accept a ``.gguf`` file wherever a model path is taken
and record the base's format (:class:`GGUFBase`); :func:`write_gguf` writes a merged Llama model back as one
``.gguf`` file that llama.cpp runs, in any of :data:`GGUF_FORMATS`.
"""

from lit_unlearn.gguf_io.load import (
    BASE_GGUF_FILE,
    GGUFBase,
    gguf_base_of,
    is_gguf,
    load_causal_lm,
    load_tokenizer,
    read_gguf_base,
)
from lit_unlearn.gguf_io.write import GGUF_EXPORT_FORMATS, GGUF_FORMATS, gguf_tensor_plan, permute_rotary_rows, write_gguf

__all__ = [
    "BASE_GGUF_FILE",
    "GGUF_EXPORT_FORMATS",
    "GGUF_FORMATS",
    "GGUFBase",
    "gguf_base_of",
    "gguf_tensor_plan",
    "is_gguf",
    "load_causal_lm",
    "load_tokenizer",
    "permute_rotary_rows",
    "read_gguf_base",
    "write_gguf",
]
