"""The registry of llama.cpp's GGUF block formats: one record per type, every table derived from it.

Each :class:`GgufFormat` says what ggml says of its type (``ggml_type`` id, ``ggml_blck_size``,
``ggml_type_size``), whether it stores a minimum besides the scale, and llama.cpp's ``general.file_type``
of a file of that type alone. The scheme registry (:mod:`.schemes`), the byte codec (:mod:`.gguf_bytes`),
llama-quantize's mixture rule (:mod:`.gguf_mixture`), format detection (:mod:`.detect`) and the GGUF writer
(:mod:`lit_unlearn.gguf_io.write`) read their names, blocks, sizes and file types from here.

Adding a block format is this record, its quantizer (:mod:`.gguf_legacy` or :mod:`.gguf_kquants`), and its
tests against ggml.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GGUF_FORMAT_RECORDS", "GgufFormat", "gguf_format"]


@dataclass(frozen=True)
class GgufFormat:
    """One GGUF block format.

    Attributes:
        name: ggml's name, lower case (``"q4_1"``).
        ggml_type: ``enum ggml_type`` (also ``gguf.GGMLQuantizationType``).
        block_weights: Weights per block along a row (32, or a K-quant's super-block of 256).
        block_bytes: Bytes per block in a file.
        has_min: Whether a block (sub-block) stores a minimum besides the scale.
        file_type: ``general.file_type`` of a file in this type alone (llama.cpp's ``llama_ftype`` name;
            ``"GUESSED"`` where llama.cpp has none).
    """

    name: str
    ggml_type: int
    block_weights: int
    block_bytes: int
    has_min: bool
    file_type: str

    @property
    def bits(self) -> int:
        """Bits per weight of its codes."""
        return int(self.name[1])


#: Every GGUF block format, in the order of their bits per weight.
GGUF_FORMAT_RECORDS: tuple[GgufFormat, ...] = (
    GgufFormat("q4_0", 2, 32, 18, False, "MOSTLY_Q4_0"),
    GgufFormat("q4_1", 3, 32, 20, True, "MOSTLY_Q4_1"),
    GgufFormat("q4_k", 12, 256, 144, True, "GUESSED"),
    GgufFormat("q5_0", 6, 32, 22, False, "MOSTLY_Q5_0"),
    GgufFormat("q5_1", 7, 32, 24, True, "MOSTLY_Q5_1"),
    GgufFormat("q5_k", 13, 256, 176, True, "GUESSED"),
    GgufFormat("q6_k", 14, 256, 210, False, "MOSTLY_Q6_K"),
    GgufFormat("q8_0", 8, 32, 34, False, "MOSTLY_Q8_0"),
)
_BY_NAME = {f.name: f for f in GGUF_FORMAT_RECORDS}


def gguf_format(name: str) -> GgufFormat:
    """The record of GGUF block format ``name``.

    Raises:
        ValueError: naming the known formats.
    """
    if name not in _BY_NAME:
        raise ValueError(f"{name!r} is not a GGUF block format; choose one of {', '.join(map(repr, _BY_NAME))}.")
    return _BY_NAME[name]
