"""quantize_model_: which layers, in place, as transformers' load_in_4bit would choose them."""

import pytest
import torch
from torch import nn

from lit_unlearn.deployment import quantize_model_
from lit_unlearn.quantization import default_filter, fake_quantize


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


@pytest.mark.parametrize(
    ("scheme", "dtype"),
    [("nf4", torch.float32), ("fp4", torch.bfloat16), ("int8", torch.float16), ("int4", torch.float32)],
)
def test_llama_linears_quantized_head_untouched(scheme, dtype):
    model = tiny_llama().to(dtype)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    weights = dict(model.named_parameters())
    block_size = 64 if scheme == "int4" else None  # hidden 64: int4's default group of 128 does not fit

    names = quantize_model_(model, scheme, block_size=block_size)

    expected = [
        f"model.layers.{i}.{part}"
        for i in range(2)
        for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    ]
    assert names == expected
    for name, p in model.named_parameters():
        assert p is weights[name] and p.dtype == dtype  # the same Parameters, modified in place
        if name.removesuffix(".weight") in names:
            assert torch.equal(p, fake_quantize(before[name], scheme, block_size)), name
        else:
            assert torch.equal(p, before[name]), name  # lm_head, embeddings, norms
    assert model(torch.tensor([[1, 2, 3]])).logits.isfinite().all()


def test_sequential_custom_filter_and_shared_weight():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.Linear(64, 64))
    model[3].weight = model[2].weight  # tied
    original = model[2].weight.detach().clone()
    names = quantize_model_(model, "nf4", filter_fn=lambda name, module: name != "0")
    assert names == ["2", "3"]
    assert torch.equal(model[2].weight, fake_quantize(original, "nf4"))  # quantized once, not twice
    assert quantize_model_(nn.Sequential(nn.ReLU()), "nf4") == []


def test_default_filter():
    linear = nn.Linear(4, 4)
    assert default_filter("model.layers.0.mlp.up_proj", linear)
    assert not default_filter("lm_head", linear)
    assert not default_filter("gpt_neox.embed_out", linear)
    assert not default_filter("model.layers.0.q_proj.lora_A.default", linear)
    assert not default_filter("model.embed_tokens", nn.Embedding(4, 4))
    assert not default_filter("attn.out_proj", nn.modules.linear.NonDynamicallyQuantizableLinear(4, 4))


def test_output_embeddings_skipped_whatever_their_name():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(64, 64)
            self.head = nn.Linear(64, 10)

        def get_output_embeddings(self):
            return self.head

    net = Net()
    assert quantize_model_(net, "fp4") == ["body"]


def test_bad_scheme_fails_before_touching_the_model():
    model = nn.Sequential(nn.Linear(256, 64), nn.Linear(64, 200), nn.Linear(200, 8))
    before = [m.weight.detach().clone() for m in model]
    with pytest.raises(ValueError, match="'nf3' is not supported; choose one of 'full', 'int8', 'nf4'"):
        quantize_model_(model, "nf3")
    assert all(torch.equal(m.weight, w) for m, w in zip(model, before))


def test_a_group_that_does_not_divide_a_row_takes_the_largest_divisor_below_it():
    model = nn.Sequential(nn.Linear(256, 64), nn.Linear(64, 200), nn.Linear(200, 8))
    before = [m.weight.detach().clone() for m in model]
    assert quantize_model_(model, "int4") == ["0", "1", "2"]
    # 256 columns: group 128 as asked; 64: one group (shorter than 128); 200: group 100, not a raise.
    assert torch.equal(model[0].weight, fake_quantize(before[0], "int4", block_size=128))
    assert torch.equal(model[1].weight, fake_quantize(before[1], "int4", block_size=64))
    assert torch.equal(model[2].weight, fake_quantize(before[2], "int4", block_size=100))
    assert not torch.equal(model[2].weight, fake_quantize(before[2], "int4", block_size=-1))
