"""Deployment.parse: the one door every entry point reads a precision through, with the one message."""

from __future__ import annotations

import pytest

from lit_unlearn.deployment import FULL, PRECISIONS, Deployment, as_deployments
from lit_unlearn.quantization import SCHEMES, get_scheme

MESSAGE = r"`{what}`='{value}' is not supported; choose one of 'full', 'int8', 'nf4', 'fp4', 'int4', 'int2'"


def test_every_form_reads_to_the_same_deployment():
    want = Deployment("int4", 64, ["q_proj"])
    assert Deployment.parse(want) is want
    assert Deployment.parse("int4:64", modules=["q_proj"]) == want
    assert Deployment.parse("int4", 64, ["q_proj"]) == want
    assert Deployment.parse({"precision": "int4", "block_size": 64, "modules": ["q_proj"]}) == want
    assert Deployment.parse({"precision": "int4"}, 64, ["q_proj"]) == want
    assert Deployment.parse(FULL).scheme is None
    assert Deployment.parse("nf4").scheme == get_scheme("nf4")
    assert set(PRECISIONS) == {FULL, *SCHEMES} and PRECISIONS[:5] == (FULL, "int8", "nf4", "fp4", "int4")


@pytest.mark.parametrize(
    "value, kwargs, message",
    [
        ("nf5", {}, MESSAGE.format(what="precision", value="nf5") + r".*block size after a colon \('int4:64'\)"),
        ("fp32", {"what": "quantization_aware"}, MESSAGE.format(what="quantization_aware", value="fp32")),
        ("int4:x", {}, r"`precision`='int4:x': the block size after ':' must be a positive integer"),
        ("int4:64", {"block_size": 32}, r"`precision`='int4:64' and `block_size`=32 disagree"),
        ("nf4:48", {}, r"block_size"),
        ("full:64", {}, r"`block_size`=64 means nothing at precision 'full'"),
        ({"precision": "nf4", "bits": 4}, {}, r"give the keys 'precision', 'block_size', 'modules'.*not \['bits'\]"),
        ({"block_size": 64}, {}, r"\(precision required\)"),
        ({"precision": "int4:64"}, {}, r"give the block size as `block_size`"),
        ("int8:64", {"refuse": {"int8": "no int8 here."}}, r"`precision`='int8:64': no int8 here\.$"),
    ],
)
def test_a_bad_precision_gets_one_message_naming_the_argument(value, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Deployment.parse(value, **kwargs)


def test_a_deployment_with_its_parts_again_and_a_non_string_are_refused():
    with pytest.raises(ValueError, match="either a `Deployment` or"):
        Deployment.parse(Deployment("nf4"), 64)
    with pytest.raises(TypeError, match=r"`precision`=4 is not a precision"):
        Deployment.parse(4)


def test_lists_of_precisions_parse_each_item_through_the_same_door():
    assert as_deployments(["full", "int4:64", Deployment("nf4", 128)]) == [
        Deployment("full"), Deployment("int4", 64), Deployment("nf4", 128)]
    with pytest.raises(ValueError, match=MESSAGE.format(what="precision", value="int9")):
        as_deployments(["full", "int9"], what="precisions")
    with pytest.raises(ValueError, match="names a precision twice"):
        as_deployments(["int4", "int4:64"])


def test_entry_points_parse_through_the_door_and_keep_their_old_spellings(tmp_path):
    from lit_unlearn import UnlearningModule
    from lit_unlearn.callbacks import PreserveQuantization
    from lit_unlearn.evaluation import check_precision
    from lit_unlearn.export import _check_quantize
    from lit_unlearn.world.probe import knowledge_report

    assert UnlearningModule("x", quantization_aware="int4:64").qat_scheme == get_scheme("int4", 64)
    with pytest.raises(ValueError, match=MESSAGE.format(what="quantization_aware", value="nf5")):
        UnlearningModule("x", quantization_aware="nf5")
    with pytest.raises(ValueError, match=r"`quantization_aware`='full': trains through no quantization"):
        UnlearningModule("x", quantization_aware="full")

    assert PreserveQuantization("int4:64").scheme == get_scheme("int4", 64)
    assert PreserveQuantization("int4", 64).scheme == get_scheme("int4", 64)
    with pytest.raises(ValueError, match=MESSAGE.format(what="scheme", value="nf5")):
        PreserveQuantization("nf5")
    with pytest.raises(ValueError, match=r"`scheme`='full': quantizes nothing"):
        PreserveQuantization("full")

    assert check_precision("int4:64") == Deployment("int4", 64)
    with pytest.raises(ValueError, match=r"`precision`='int4' is not supported \(bitsandbytes has no int4"):
        check_precision("int4", "bitsandbytes")

    # `lit-unlearn export --quantize none` (the README's spelling) and `full` are the same.
    assert _check_quantize("none") == _check_quantize("full") == "none"
    assert _check_quantize("nf4") == "nf4"
    with pytest.raises(ValueError, match=r"`quantize`='int4' is not supported \(bitsandbytes stores these"):
        _check_quantize("int4")
    with pytest.raises(ValueError, match=r"`quantize`='nf4:128' is not supported"):
        _check_quantize("nf4:128")
    with pytest.raises(ValueError, match=MESSAGE.format(what="quantize", value="nf5")):
        _check_quantize("nf5")

    # The toy world's manifest calls full precision "fp32"; its probe reads both.
    with pytest.raises(ValueError, match=MESSAGE.format(what="schemes", value="int3x")):
        knowledge_report(None, None, tmp_path, schemes=("fp32", "full", "int3x"))
