"""llama.cpp's file-level mixtures ``q4_k_m`` / ``q5_k_m``: which GGUF type each tensor gets.

A port of ``llama_tensor_get_type`` (llama.cpp ``src/llama-quant.cpp``) for Llama-architecture models
(dense, no experts; the 70B-only and Falcon-only rules are left out), as ``llama-quantize model.gguf
Q4_K_M`` applies it:

* every quantizable 2-D ``*.weight`` (not ``*_norm.weight``) gets the mixture's base type (Q4_K / Q5_K);
* ``output.weight``, or ``token_embd.weight`` when the model has no ``output.weight`` (tied embeddings):
  Q6_K, or Q8_0 when its rows are not whole 256-weight super-blocks;
* ``blk.N.attn_v.weight``: Q6_K when ``use_more_bits(i, n)``, counting attn_v tensors in file order;
  ``blk.N.ffn_down.weight``: the same with ``n`` the number of layers; ``attn_qkv`` (fused): Q5_K / Q6_K;
* finally, a row that is not a whole block of the chosen type falls back (``tensor_type_fallback``):
  Q4_K→Q5_0, Q5_K→Q5_1, Q6_K→Q8_0, and to F16 when even that block does not fit.

``use_more_bits(i, n) = i < n/8 or i >= 7n/8 or (i - n/8) % 3 == 2`` (integer division): the first and
last eighth of the layers and every third one between.

Example::

    >>> gguf_tensor_types([("blk.0.attn_v.weight", (64, 256)), ("blk.0.attn_q.weight", (256, 256)),
    ...                    ("output.weight", (100, 256))], "q4_k_m", n_layers=1)
    {'blk.0.attn_v.weight': 'q6_k', 'blk.0.attn_q.weight': 'q4_k', 'output.weight': 'q6_k'}
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from lit_unlearn.quantization.gguf_formats import GGUF_FORMAT_RECORDS

#: The base type of each mixture (``default_type`` in llama-quant.cpp).
MIXTURE_BASE = {"q4_k_m": "q4_k", "q5_k_m": "q5_k"}
#: ``tensor_type_fallback``: the type a K-quant falls back to when a row is not whole super-blocks.
FALLBACK = {"q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}
_BLOCK = {f.name: f.block_weights for f in GGUF_FORMAT_RECORDS}
_UNQUANTIZED = "fp16"


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's choice of the layers that get more bits in ``*_M`` mixtures."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def gguf_fallback_type(type_name: str, row: int) -> str:
    """The type llama.cpp stores a tensor with rows of ``row`` weights in when it asked for ``type_name``.

    ``type_name`` itself when whole blocks fit; else Q4_K→Q5_0, Q5_K→Q5_1, Q6_K→Q8_0, and ``"fp16"`` when
    the fallback's 32-weight block does not fit either (llama.cpp's F16).
    """
    if row % _BLOCK[type_name] == 0:
        return type_name
    fallback = FALLBACK.get(type_name, type_name)
    return fallback if row % _BLOCK[fallback] == 0 else _UNQUANTIZED


def _quantizable(name: str, shape: Sequence[int]) -> bool:
    # tensor_allows_quantization: 2-D or more, ends in "weight", no norms, no position/token-type tables.
    return (
        len(shape) >= 2 and name.endswith("weight") and "_norm.weight" not in name
        and name not in ("position_embd.weight", "token_types.weight")
    )


def gguf_tensor_types(
    names_and_shapes: Iterable[tuple[str, Sequence[int]]], mixture: str, n_layers: int
) -> dict[str, str]:
    """The GGUF type llama.cpp's quantize tool gives each tensor of a Llama model for ``mixture``.

    Args:
        names_and_shapes: ``(gguf_name, shape)`` in file order (``blk.N.attn_v.weight``, ...), ``shape`` in
            torch order: the last entry is the row length (ggml's ``ne[0]``).
        mixture: ``"q4_k_m"`` or ``"q5_k_m"``.
        n_layers: The model's number of blocks (``llama.block_count``).

    Returns:
        ``{name: type}`` for every tensor, in input order; a type is one of the GGUF scheme names,
        ``"fp16"`` (llama.cpp's F16 for a row no block fits) or ``"f32"`` for tensors left unquantized.

    Raises:
        ValueError: for an unknown mixture or a non-positive ``n_layers``.
    """
    if mixture not in MIXTURE_BASE:
        raise ValueError(f"`mixture`={mixture!r} is not a GGUF mixture; choose one of {', '.join(map(repr, MIXTURE_BASE))}.")
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise ValueError(f"`n_layers`={n_layers!r} must be the model's positive number of blocks.")
    items = [(name, tuple(shape)) for name, shape in names_and_shapes]
    base = MIXTURE_BASE[mixture]
    tied = not any(name == "output.weight" for name, _ in items)
    n_attn_v = sum(1 for name, _ in items if ".attn_v." in name)
    i_attn_v = i_ffn_down = 0
    types: dict[str, str] = {}
    for name, shape in items:
        if not _quantizable(name, shape):
            types[name] = "f32"
            continue
        row = shape[-1]
        chosen = base
        if name == "output.weight" or (tied and name == "token_embd.weight"):
            chosen = "q8_0" if row % 256 else "q6_k"
        elif ".attn_v." in name:
            if use_more_bits(i_attn_v, n_attn_v):
                chosen = "q6_k"
            i_attn_v += 1
        elif ".ffn_down." in name:
            if use_more_bits(i_ffn_down, n_layers):
                chosen = "q6_k"
            i_ffn_down += 1
        elif ".attn_qkv." in name:
            chosen = "q5_k" if mixture == "q4_k_m" else "q6_k"
        types[name] = gguf_fallback_type(chosen, row)
    return types


_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def hf_to_gguf_names(names: Iterable[str], n_layers: int) -> dict[str, str]:
    """GGUF tensor names of Hugging Face Llama parameter names (``model.layers.0.self_attn.v_proj.weight``).

    Uses the ``gguf`` package's own table (``gguf.get_tensor_name_map(MODEL_ARCH.LLAMA, n_layers)``), the
    one llama.cpp's ``convert_hf_to_gguf.py`` uses; names it does not know are left out.

    Raises:
        ImportError: without the ``gguf`` package (``pip install 'lit-unlearn[gguf]'``).
    """
    try:
        import gguf
    except ImportError as err:  # pragma: no cover - the test extra installs it
        raise ImportError("Mapping to GGUF tensor names needs the `gguf` package: pip install 'lit-unlearn[gguf]'.") from err
    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    out: dict[str, str] = {}
    for name in names:
        mapped = table.get_name(name, try_suffixes=(".weight", ".bias"))
        if mapped is not None:
            out[name] = mapped
    return out


def count_layers(names: Iterable[str]) -> int:
    """``1 + the largest N`` of the ``layers.N.`` components in ``names`` (0 if none)."""
    indices = [int(m.group(1)) for name in names for m in [_LAYER.search(name)] if m]
    return max(indices) + 1 if indices else 0


def hf_tensor_types(shapes: Mapping[str, Sequence[int]], mixture: str, n_layers: int | None = None) -> dict[str, str]:
    """:func:`gguf_tensor_types` keyed by Hugging Face Llama parameter names (``...v_proj.weight``).

    ``shapes`` maps parameter names to torch shapes (a ``state_dict``'s); the GGUF file order is
    reproduced by sorting on the GGUF name as ``convert_hf_to_gguf.py`` writes them (token embedding, then
    blocks in order). ``n_layers`` defaults to :func:`count_layers`.
    """
    n_layers = n_layers or count_layers(shapes)
    gguf_names = hf_to_gguf_names(shapes, max(n_layers, 1))
    order = sorted(gguf_names, key=lambda hf: _file_order(gguf_names[hf]))
    types = gguf_tensor_types([(gguf_names[hf], shapes[hf]) for hf in order], mixture, max(n_layers, 1))
    return {hf: types[gguf_names[hf]] for hf in order}


def _file_order(gguf_name: str) -> tuple[int, int, str]:
    match = re.match(r"blk\.(\d+)\.", gguf_name)
    if match:
        return (1, int(match.group(1)), gguf_name)
    return (0 if gguf_name.startswith("token_embd") else 2, 0, gguf_name)
