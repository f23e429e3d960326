"""Quantization schemes: which weight format a deployment would use, as a small frozen config.

Four families; the first three are "one scale per run of consecutive weights":

* ``"nf4"``, ``"fp4"``: bitsandbytes' 4-bit formats (``load_in_4bit``). The weight is flattened and cut
  into blocks of ``block_size`` consecutive elements (default 64, the last block may be shorter); each
  block stores its absmax and every element the index of the nearest of 16 fixed levels in ``[-1, 1]``.
* ``"int8"``: LLM.int8's weight format (``load_in_8bit``): one absmax per output row, codes in
  ``[-127, 127]``. The name belongs to this format because that is what "8-bit" means in the papers.
* ``"int2"`` … ``"int7"`` and ``"rtn8"``: round-to-nearest with ``b`` bits, one scale per group of
  ``block_size`` consecutive weights along the input dimension (default 128), or per output row
  (``block_size=-1``). Symmetric by default; the ``-asym`` names (or ``symmetric=False``) add a zero
  point. Group-wise 8-bit is ``"rtn8"`` because ``"int8"`` is taken by LLM.int8.
* ``"bf16"``, ``"fp16"``: the half-precision copy a deployment stores (``save_pretrained(dtype=...)``, a
  bf16 merge): each weight rounded to the nearest value of that dtype, ties to even. The code is the bit
  pattern; there is no scale. An update under half an ulp of its weight vanishes here, before any 4-bit
  step.
* ``"q8_0"``, ``"q4_0"``, ``"q4_1"``, ``"q5_0"``, ``"q5_1"``, ``"q4_k"``, ``"q5_k"``, ``"q6_k"``: llama.cpp's
  GGUF block formats, bit for bit as ggml's reference quantizers compute them (:mod:`.gguf`): blocks of 32
  weights along each row (legacy types), 256-weight super-blocks for the K-quants. The block size is
  fixed by the format. ``"q4_k_m"``, ``"q5_k_m"`` are llama.cpp's file-level mixtures: each layer gets the
  type llama.cpp's quantize tool assigns it (:mod:`.gguf_mixture`).

Example::

    >>> get_scheme("nf4")
    Scheme(name='nf4', block_size=64, bits=4, symmetric=True)
    >>> get_scheme("int4", block_size=-1, symmetric=False)
    Scheme(name='int4-asym', block_size=None, bits=4, symmetric=False)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from lit_unlearn.quantization.gguf_formats import GGUF_FORMAT_RECORDS, gguf_format

BNB4_SCHEMES: tuple[str, ...] = ("nf4", "fp4")
# bitsandbytes.functional.quantize_4bit accepts exactly these block sizes (0.48 – 0.50).
BNB4_BLOCK_SIZES: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048, 4096)
# Block 64 is what transformers' BitsAndBytesConfig (and so P1's load_in_4bit runs) uses.
BNB4_DEFAULT_BLOCK_SIZE = 64

_RTN_SYMMETRIC: tuple[str, ...] = ("int2", "int3", "int4", "int5", "int6", "int7", "rtn8")
_RTN_ASYMMETRIC: tuple[str, ...] = tuple(f"{name}-asym" for name in _RTN_SYMMETRIC)
# Group 128 is the common choice of weight-only RTN/GPTQ/AWQ deployments; P2 used it for int4.
RTN_DEFAULT_GROUP_SIZE = 128

#: Half-precision casts: the dtype a deployed copy is stored in.
HALF_SCHEMES: tuple[str, ...] = ("bf16", "fp16")

#: llama.cpp's GGUF block formats, in the order of their bits per weight (ggml names, lower case), from the
#: registry of :mod:`.gguf_formats`.
GGUF_SCHEMES: tuple[str, ...] = tuple(f.name for f in GGUF_FORMAT_RECORDS)
#: llama.cpp's file-level mixtures (``llama-quantize ... Q4_K_M``): a type per tensor, their base K-quant.
GGUF_MIXTURES: tuple[str, ...] = ("q4_k_m", "q5_k_m")
_MIXTURE_BASE = {"q4_k_m": "q4_k", "q5_k_m": "q5_k"}
# Weights per block: a legacy block, or a K-quant super-block (a mixture: its base type's).
GGUF_BLOCK_SIZES = {f.name: f.block_weights for f in GGUF_FORMAT_RECORDS} | {
    m: gguf_format(base).block_weights for m, base in _MIXTURE_BASE.items()}
# Formats that store a per-block (sub-block) minimum besides the scale.
_GGUF_WITH_MIN = frozenset({f.name for f in GGUF_FORMAT_RECORDS if f.has_min}
                           | {m for m, base in _MIXTURE_BASE.items() if gguf_format(base).has_min})

SCHEMES: tuple[str, ...] = (
    *BNB4_SCHEMES, "int8", *_RTN_SYMMETRIC, *_RTN_ASYMMETRIC, *HALF_SCHEMES, *GGUF_SCHEMES, *GGUF_MIXTURES,
)

_BITS = (
    {"nf4": 4, "fp4": 4, "int8": 8, "rtn8": 8, "bf16": 16, "fp16": 16}
    | {f"int{b}": b for b in range(2, 8)}
    | {name: int(name[1]) for name in (*GGUF_SCHEMES, *GGUF_MIXTURES)}
)


_RTN_BASES = frozenset({f"int{b}" for b in range(2, 8)} | {"rtn8"})


def _base(name: str) -> str:
    return name.removesuffix("-asym")


def _family(name: str) -> str:
    if name in BNB4_SCHEMES:
        return "bnb4"
    if name == "int8":
        return "llm_int8"
    if name in HALF_SCHEMES:
        return "half"
    if name in GGUF_SCHEMES:
        return "gguf"
    if name in GGUF_MIXTURES:
        return "gguf_mixture"
    if _base(name) in _RTN_BASES:
        return "rtn"
    # A name that reaches here was added to SCHEMES without a family: fail, never fall back to RTN.
    raise ValueError(_unknown_name_message(name))


_DEFAULT_BLOCK_SIZE = {
    "bnb4": BNB4_DEFAULT_BLOCK_SIZE, "llm_int8": None, "rtn": RTN_DEFAULT_GROUP_SIZE, "half": None,
}


def _default_block_size(name: str) -> int | None:
    return GGUF_BLOCK_SIZES[name] if name in GGUF_BLOCK_SIZES else _DEFAULT_BLOCK_SIZE[_family(name)]


def _choices() -> str:
    return ", ".join(map(repr, SCHEMES))


@dataclass(frozen=True)
class Scheme:
    """A weight quantization format: its name (one of :data:`SCHEMES`) and its block (group) size.

    ``bits`` and ``symmetric`` follow from ``name``, so a ``Scheme`` cannot contradict itself. Build one
    with :func:`get_scheme`, which fills in each family's default block size.

    Args:
        name: One of :data:`SCHEMES`.
        block_size: ``"nf4"``/``"fp4"``: elements per absmax block of the flattened weight, one of
            :data:`BNB4_BLOCK_SIZES`. RTN schemes: weights per group along the last (input) dimension
            (rows shorter than that are one group; longer rows must be a multiple of it), or ``None`` for
            one scale per output row. ``"int8"``: must be ``None`` (row-wise).

    Raises:
        ValueError: for a name outside :data:`SCHEMES` or a block size the format does not accept.
    """

    name: str
    block_size: int | None
    bits: int = field(init=False)
    symmetric: bool = field(init=False)

    def __post_init__(self) -> None:
        if self.name not in SCHEMES:
            raise ValueError(_unknown_name_message(self.name))
        _check_block_size(self.name, self.block_size)
        object.__setattr__(self, "bits", _BITS[_base(self.name)])
        object.__setattr__(
            self, "symmetric", not self.name.endswith("-asym") and self.name not in _GGUF_WITH_MIN
        )

    @property
    def family(self) -> str:
        """``"bnb4"`` (nf4/fp4), ``"llm_int8"`` (int8), ``"rtn"`` (int-k round-to-nearest), ``"half"``
        (bf16/fp16 casts), ``"gguf"`` (llama.cpp block formats) or ``"gguf_mixture"`` (q4_k_m, q5_k_m)."""
        return _family(self.name)

    @property
    def group_size(self) -> int | None:
        """Alias of ``block_size`` in the vocabulary of group-wise RTN."""
        return self.block_size

    @property
    def qmax(self) -> int:
        """Largest code: ``2^(b-1) - 1`` symmetric (codes in ``[-qmax, qmax]``), ``2^b - 1`` asymmetric."""
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1


def _unknown_name_message(name: object) -> str:
    text = str(name)
    hint = ""
    if text.startswith("int") and _base(text)[3:].isdigit():
        bits = int(_base(text)[3:])
        if bits == 8:
            hint = (
                " 'int8' is LLM.int8 row-wise (symmetric only); group-wise 8-bit RTN is 'rtn8' / 'rtn8-asym'."
            )
        else:
            hint = (
                f" Bit width {bits} is not supported: round-to-nearest takes 2 to 8 bits (int2 … int7, rtn8)."
            )
    return f"Unknown quantization scheme {name!r}.{hint} Choose one of {_choices()}."


def _check_block_size(name: str, block_size: int | None) -> None:
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int)):
        raise ValueError(f"`block_size`={block_size!r} for scheme {name!r} must be an int or None.")
    if name in BNB4_SCHEMES:
        if block_size not in BNB4_BLOCK_SIZES:
            sizes = ", ".join(map(str, BNB4_BLOCK_SIZES))
            raise ValueError(
                f"`block_size`={block_size!r} is not a bitsandbytes 4-bit block size for {name!r}; "
                f"choose one of {sizes} (default {BNB4_DEFAULT_BLOCK_SIZE})."
            )
    elif name in HALF_SCHEMES:
        if block_size is not None:
            raise ValueError(
                f"`block_size`={block_size!r} does not apply to {name!r}: a half-precision cast rounds each "
                "weight on its own. Pass block_size=None."
            )
    elif name in GGUF_BLOCK_SIZES:
        if block_size != GGUF_BLOCK_SIZES[name]:
            raise ValueError(
                f"`block_size`={block_size!r} does not apply to {name!r}: ggml fixes its block at "
                f"{GGUF_BLOCK_SIZES[name]} weights along each row. Pass block_size=None (or "
                f"{GGUF_BLOCK_SIZES[name]})."
            )
    elif name == "int8":
        if block_size is not None:
            raise ValueError(
                f"`block_size`={block_size!r} does not apply to 'int8': LLM.int8 keeps one scale per "
                "output row. Pass block_size=None, or use 'rtn8' for group-wise 8-bit round-to-nearest."
            )
    elif block_size is not None and block_size < 1:
        raise ValueError(
            f"`block_size`={block_size!r} for {name!r} must be a positive group size (default "
            f"{RTN_DEFAULT_GROUP_SIZE}), or -1 in get_scheme / None in Scheme for one scale per output row."
        )


def get_scheme(name: str | Scheme, block_size: int | None = None, *, symmetric: bool | None = None) -> Scheme:
    """Resolve a scheme name (or an existing :class:`Scheme`) and options into a validated :class:`Scheme`.

    Args:
        name: One of :data:`SCHEMES`, or a :class:`Scheme` (returned as is unless an option overrides it).
        block_size: ``None`` keeps the default (64 for nf4/fp4, 128 for RTN, row-wise for int8, or the
            given Scheme's own). For RTN schemes ``-1`` means one scale per output row.
        symmetric: ``False`` selects the zero-point variant of an RTN scheme (``"int4"`` → ``"int4-asym"``);
            ``None`` keeps what the name says.

    Raises:
        ValueError: for an unknown name or bit width (the message lists :data:`SCHEMES`), a block size the
            format does not accept, or ``symmetric=False`` for a format without zero points.

    Example::

        >>> get_scheme("fp4", block_size=128).block_size
        128
    """
    if isinstance(name, Scheme):
        scheme = name
    elif isinstance(name, str) and name in SCHEMES:
        scheme = Scheme(name, _default_block_size(name))
    else:
        raise ValueError(_unknown_name_message(name))

    if symmetric is not None and symmetric != scheme.symmetric:
        if scheme.family != "rtn":
            raise ValueError(
                f"`symmetric`={symmetric!r} is not available for {scheme.name!r}: bitsandbytes' nf4/fp4 and "
                "LLM.int8 formats are symmetric absmax, and each GGUF format fixes whether it stores a minimum "
                "('q4_1', 'q5_1', K-quants do). Use an RTN scheme such as 'int4' for a zero point."
            )
        scheme = dataclasses.replace(scheme, name=_base(scheme.name) + ("" if symmetric else "-asym"))
    if block_size is not None:
        if block_size == -1 and scheme.family == "rtn":
            block_size = None
        elif block_size == -1:
            raise ValueError(
                f"`block_size`=-1 (one scale per output row) applies to RTN schemes, not {scheme.name!r}; "
                f"choose from {', '.join(map(str, BNB4_BLOCK_SIZES))} for nf4/fp4, or None for int8."
            )
        scheme = dataclasses.replace(scheme, block_size=block_size)
    return scheme
