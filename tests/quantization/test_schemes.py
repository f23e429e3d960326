import pytest

from lit_unlearn.quantization import SCHEMES, Scheme, get_scheme


def test_names_and_defaults():
    assert SCHEMES[:3] == ("nf4", "fp4", "int8")
    assert {f"int{b}" for b in range(2, 8)} | {"rtn8"} <= set(SCHEMES)
    assert get_scheme("nf4") == Scheme("nf4", 64)
    assert get_scheme("fp4").block_size == 64
    assert get_scheme("int8").block_size is None
    int4 = get_scheme("int4")
    assert (int4.bits, int4.block_size, int4.symmetric, int4.qmax, int4.family) == (4, 128, True, 7, "rtn")
    assert get_scheme("rtn8").qmax == 127


def test_options():
    assert get_scheme("int4", symmetric=False) == Scheme("int4-asym", 128)
    assert get_scheme("int4-asym").qmax == 15
    assert get_scheme("int4-asym", symmetric=True).name == "int4"
    assert get_scheme("int3", block_size=-1).block_size is None
    assert get_scheme("fp4", block_size=4096).block_size == 4096
    scheme = get_scheme("nf4", block_size=128)
    assert get_scheme(scheme) is scheme
    assert get_scheme(scheme, block_size=32).block_size == 32


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("nf5", "Unknown quantization scheme 'nf5'"),
        ("int9", "Bit width 9 is not supported"),
        ("int1", "Bit width 1 is not supported"),
        ("int8-asym", "'rtn8' / 'rtn8-asym'"),
    ],
)
def test_unknown_names_list_the_choices(name, fragment):
    with pytest.raises(ValueError, match="Choose one of 'nf4', 'fp4', 'int8', 'int2'") as err:
        get_scheme(name)
    assert fragment in str(err.value)


def test_bad_block_sizes():
    bnb_sizes = r"`block_size`=48 is not a bitsandbytes 4-bit block size for 'nf4'; choose one of 32, 64"
    with pytest.raises(ValueError, match=bnb_sizes):
        get_scheme("nf4", block_size=48)
    with pytest.raises(ValueError, match="LLM.int8 keeps one scale per output row"):
        get_scheme("int8", block_size=64)
    with pytest.raises(ValueError, match="applies to RTN schemes"):
        get_scheme("fp4", block_size=-1)
    with pytest.raises(ValueError, match="must be a positive group size"):
        get_scheme("int4", block_size=0)
    with pytest.raises(ValueError, match="must be an int or None"):
        Scheme("int4", 12.5)
    with pytest.raises(ValueError, match="Unknown quantization scheme 'int4-asym2'"):
        Scheme("int4-asym2", 128)


def test_symmetric_only_formats():
    with pytest.raises(ValueError, match="`symmetric`=False is not available for 'nf4'"):
        get_scheme("nf4", symmetric=False)
