"""The one BitsAndBytesConfig: what each deployment loads as, and the refusal of a format bitsandbytes has not."""

import pytest
import torch

from lit_unlearn.deployment.bitsandbytes import bitsandbytes_config
from lit_unlearn.four_bit_base import FourBitBase


def test_each_precision_loads_as_bitsandbytes_deploys_it():
    int8 = bitsandbytes_config("int8", torch.float32)
    assert int8.load_in_8bit and not int8.load_in_4bit
    fp4 = bitsandbytes_config("fp4", torch.bfloat16, double_quant=True)
    assert fp4.load_in_4bit and fp4.bnb_4bit_quant_type == "fp4" and fp4.bnb_4bit_compute_dtype == torch.bfloat16
    assert fp4.bnb_4bit_use_double_quant
    # A QLoRA base loads through the same door.
    base = FourBitBase("nf4", "float16", True).bitsandbytes_config()
    assert base.to_dict() == bitsandbytes_config("nf4", torch.float16, double_quant=True).to_dict()


def test_a_format_bitsandbytes_has_not_is_refused():
    with pytest.raises(ValueError, match="not 'q4_1'"):
        bitsandbytes_config("q4_1", torch.float32)
