"""`quantization_aware` trains only through what its evaluation deploys: weight-only grids, never LLM.int8."""

from __future__ import annotations

import pytest

from lit_unlearn import UnlearningModule
from lit_unlearn.quantization import get_scheme


@pytest.mark.parametrize("spec", ["int8", "int8:64"])
def test_int8_is_refused_with_the_weight_only_grid_to_use(spec):
    with pytest.raises(ValueError, match=rf"`quantization_aware`='{spec}'.*LLM\.int8.*'rtn8'.*weight-only"):
        UnlearningModule("does/not/matter", quantization_aware=spec)


@pytest.mark.parametrize("spec, block", [("rtn8", None), ("rtn8:64", 64)])
def test_the_weight_only_8_bit_grid_trains(spec, block):
    assert UnlearningModule("does/not/matter", quantization_aware=spec).qat_scheme == get_scheme("rtn8", block)
