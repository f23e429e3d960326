"""The GGUF format registry agrees with the ``gguf`` package (llama.cpp's own Python tables), and every
table that lists GGUF formats is derived from it or covers it."""

from __future__ import annotations

import gguf
import pytest

from lit_unlearn.gguf_io.write import GGUF_FORMATS as WRITABLE
from lit_unlearn.quantization import SCHEMES, get_scheme
from lit_unlearn.quantization.detect import DETECTED_FORMATS
from lit_unlearn.quantization.gguf_bytes import BLOCK_BYTES, BLOCK_WEIGHTS, GGML_TYPE
from lit_unlearn.quantization.gguf_formats import GGUF_FORMAT_RECORDS, gguf_format


@pytest.mark.parametrize("record", GGUF_FORMAT_RECORDS, ids=lambda f: f.name)
def test_each_record_is_what_ggml_says_of_its_type(record):
    ggml_type = gguf.GGMLQuantizationType[record.name.upper()]
    assert record.ggml_type == ggml_type.value
    assert (record.block_weights, record.block_bytes) == gguf.GGML_QUANT_SIZES[ggml_type]
    if record.file_type != "GUESSED":
        assert record.file_type == f"MOSTLY_{record.name.upper()}"
        assert gguf.LlamaFileType[record.file_type]
    else:
        assert f"MOSTLY_{record.name.upper()}" not in gguf.LlamaFileType.__members__
    scheme = get_scheme(record.name)
    assert scheme.block_size == record.block_weights and scheme.symmetric == (not record.has_min)
    assert scheme.bits == record.bits


def test_every_table_of_formats_comes_from_the_registry():
    names = [f.name for f in GGUF_FORMAT_RECORDS]
    assert [n for n in SCHEMES if n in names] == names
    assert GGML_TYPE == {f.name: f.ggml_type for f in sorted(GGUF_FORMAT_RECORDS, key=lambda f: f.ggml_type)}
    assert BLOCK_WEIGHTS.keys() == BLOCK_BYTES.keys() == set(names)
    assert set(names) <= set(WRITABLE) and set(names) <= set(DETECTED_FORMATS)
    with pytest.raises(ValueError, match=r"'q3_k' is not a GGUF block format; choose one of 'q4_0'"):
        gguf_format("q3_k")
