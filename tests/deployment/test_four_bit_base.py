"""A LoRA adapter over a bitsandbytes 4-bit base (QLoRA) deploys along peft's 4-bit merge: W0 is the
decoded base, the merge W0 + ΔW is re-quantized in the base's format, and every measurement (the deployed
layers, the functional check's model, export's two copies) equals what peft's ``merge_and_unload`` writes."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

from lit_unlearn.adapters import LoRA, apply_lora
from lit_unlearn.survival.layers import delta_buffer, prepare_references, select_linear_layers
from lit_unlearn.deployment import deployed_layers, deployed_model, deployed_weights
from lit_unlearn.deployment.four_bit import dequantized_merged_state, requantize_merged_
from lit_unlearn.four_bit_base import BASE_QUANTIZATION_FILE, FourBitBase, four_bit_base, read_four_bit_base
from lit_unlearn.quantization import get_scheme
from lit_unlearn.quantization.bnb_decode import (
    dequantize_4bit_as_cuda,
    dequantize_params4bit,
    keep_4bit_layout,
)

IDS = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 2], [1, 7, 8, 9, 10, 11, 12, 2]])
ADAPTED = ["q_proj", "v_proj", "down_proj"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    # Every row is a whole number of 64-blocks, so bitsandbytes' CPU decoders agree with its CUDA kernel
    # here and peft's merge (which decodes with them) is comparable bit for bit.
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False,
    )
    path = tmp_path_factory.mktemp("base")
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def _four_bit(base_dir, quant_type="nf4", double_quant=False, keep=True):
    config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=quant_type, bnb_4bit_compute_dtype=torch.float32,
        bnb_4bit_use_double_quant=double_quant,
    )
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, quantization_config=config)
    if keep:
        keep_4bit_layout(model)
    return model


def _qlora(base_dir, quant_type="nf4", double_quant=False, scale=0.05):
    model = apply_lora(_four_bit(base_dir, quant_type, double_quant), LoRA(r=4, alpha=8.0, dropout=0.0,
                                                                         target_modules=ADAPTED))
    generator = torch.Generator().manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_A" in name:
            param.data = torch.randn(param.shape, generator=generator) / param.shape[1] ** 0.5
        elif "lora_B" in name:
            param.data = torch.randn(param.shape, generator=generator) * scale
    return model.eval()


def _peft_merged(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Merge lora module to 4-bit linear may get different generations"
        return model.merge_and_unload()


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [False, True])
def test_decoded_base_is_bitsandbytes_dequantize(base_dir, quant_type, double_quant):
    model = _four_bit(base_dir, quant_type, double_quant)
    import bitsandbytes.functional as bnbf

    weight = model.model.layers[0].self_attn.q_proj.weight
    assert weight.quant_state.nested is double_quant
    ours = dequantize_params4bit(weight)
    assert torch.equal(ours, bnbf.dequantize_4bit(weight.data, weight.quant_state))
    if not double_quant:
        state = weight.quant_state
        expected = dequantize_4bit_as_cuda(weight.data, state.absmax, quant_type, state.blocksize, state.shape)
        assert torch.equal(ours, expected)


def test_deployed_layers_of_a_4bit_base(base_dir):
    model = _qlora(base_dir)
    layers = {layer.name: layer for layer in deployed_layers(model)}
    nf4 = get_scheme("nf4")
    adapted = [n for n, layer in layers.items() if layer.lora is not None]
    frozen = [n for n, layer in layers.items() if layer.source == "frozen"]
    assert len(adapted) == 6 and all(n.endswith(tuple(ADAPTED)) for n in adapted)
    assert len(frozen) == 8, "the 4-bit layers without an adapter are deployed too"
    assert all(layer.base_format == nf4 and layer.quantized for layer in layers.values())
    assert "lm_head" not in layers, "the output head stays in full precision"
    layer = layers["model.layers.0.self_attn.q_proj"]
    assert layer.shape == (64, 64) and layer.numel == 64 * 64
    # In the base's own format the original deployment is the base itself: Q(W0) = W0.
    assert torch.equal(layer.weight(nf4, original=True), layer.w0())
    assert torch.equal(layer.quantized_weight(nf4, original=True).dequantize(), layer.w0())


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [False, True])
def test_merge_requantize_is_peft_merge_and_unload_bit_for_bit(base_dir, quant_type, double_quant):
    """The oracle is peft's merge on bitsandbytes' ``Linear4bit`` (``compress_statistics`` = double_quant),
    decoded by bitsandbytes' own ``dequantize_4bit`` from the merged ``Params4bit``'s ``quant_state``."""
    import bitsandbytes.functional as bnbf

    ours_model, peft_model = _qlora(base_dir, quant_type, double_quant), _qlora(base_dir, quant_type, double_quant)
    scheme = get_scheme(quant_type)
    layers = deployed_layers(ours_model)
    deployed = {layer.name: layer.weight(scheme) for layer in layers}
    theirs = _peft_merged(peft_model)
    for name, weight in deployed.items():
        merged = theirs.get_submodule(name).weight
        assert merged.quant_state.nested is double_quant, name
        assert torch.equal(weight, bnbf.dequantize_4bit(merged.data, merged.quant_state)), name
    if double_quant:
        # The original model is deployed as peft merges a zero update: every adapted layer re-quantized
        # with fresh nested scales, which decode to other values than the stored base's.
        zero = _peft_merged(_qlora(base_dir, quant_type, double_quant, scale=0.0))
        adapted = [layer for layer in layers if layer.lora is not None]
        assert len(adapted) == 6
        for layer in adapted:
            merged = zero.get_submodule(layer.name).weight
            expected = bnbf.dequantize_4bit(merged.data, merged.quant_state)
            assert torch.equal(layer.weight(scheme, original=True), expected), layer.name
            stored = layer.linear.weight
            assert not torch.equal(expected, bnbf.dequantize_4bit(stored.data, stored.quant_state)), layer.name
    # The same weights through the functional check's model: logits equal the merged 4-bit model's.
    with torch.no_grad():
        expected = theirs(IDS).logits
        with deployed_weights(ours_model, quant_type) as model:
            eager = model(IDS).logits
        with deployed_model(ours_model, deployed_layers(ours_model), scheme, lazy=True) as model:
            lazy = model(IDS).logits
    assert torch.equal(eager, expected) and torch.equal(lazy, expected)
    # export's re-quantized copy is peft's, tensor for tensor (codes, scales, nested scales).
    requantized = requantize_merged_(ours_model)
    ours_state, theirs_state = requantized.state_dict(), theirs.state_dict()
    assert list(ours_state) == list(theirs_state)
    assert all(torch.equal(ours_state[k], theirs_state[k]) for k in ours_state)


def test_full_precision_merge_is_decoded_base_plus_update(base_dir):
    model = _qlora(base_dir)
    layers = {layer.name: layer for layer in deployed_layers(model)}
    state = dequantized_merged_state(model, torch.bfloat16)
    assert len(state) == 14 and all(v.dtype == torch.bfloat16 for v in state.values())
    q = layers["model.layers.0.self_attn.q_proj"]
    delta = q.delta()
    assert delta.abs().max() > 0
    assert torch.equal(state["model.layers.0.self_attn.q_proj.weight"], (q.w0() + delta).to(torch.bfloat16))
    k = layers["model.layers.0.self_attn.k_proj"]
    assert torch.equal(state["model.layers.0.self_attn.k_proj.weight"], k.w0().to(torch.bfloat16))
    # The functional check at full precision runs that merge (in float32, before the bf16 cast).
    with torch.no_grad(), deployed_weights(model, "full") as deployed:
        full = deployed(IDS).logits
        adapter_on = model(IDS).logits
    torch.testing.assert_close(full, adapter_on, rtol=1e-4, atol=1e-4)


def test_update_below_half_an_nf4_step_is_erased_and_a_large_one_survives(base_dir):
    nf4 = get_scheme("nf4")
    for scale, survives in ((1e-7, False), (0.5, True)):
        model = _qlora(base_dir, scale=scale)
        layers = select_linear_layers(model, None)
        prepare_references(layers, [nf4], {})
        stats = [layer.survival([nf4])["nf4"] for layer in layers if layer.lora is not None]
        changed = sum(s.changed * s.numel for s in stats) / sum(s.numel for s in stats)
        if survives:
            assert changed > 0.2 and all(s.cosine > 0.5 for s in stats)
        else:
            # Not one code flips; only the block scales move, with the block's largest weight.
            assert changed == 0.0 and all(abs(s.retained) < 0.05 for s in stats), "rounding gives W0 back"
            with torch.no_grad():
                with deployed_weights(model, "nf4") as deployed:
                    q = deployed(IDS).logits
                with deployed_model(model, layers, nf4, original=True) as o:
                    original = o(IDS).logits
            torch.testing.assert_close(q, original, rtol=0, atol=1e-5, msg="the re-quantized merge is the base again")


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [False, True])
def test_a_check_decodes_the_base_into_its_buffer_and_measures_the_same(base_dir, quant_type, double_quant):
    # One check's buffer holds ΔW and, over a 4-bit base, the decoded W0 (no weight-sized allocation per
    # layer): the statistics are those of a check that allocates, field for field.
    schemes = [get_scheme("nf4"), get_scheme("fp4"), get_scheme("int8")]
    model = _qlora(base_dir, quant_type, double_quant, scale=0.05)
    layers = select_linear_layers(model, None)
    prepare_references(layers, schemes, {})
    buffer = delta_buffer(layers)
    adapted = [layer for layer in layers if layer.lora is not None]
    assert buffer.numel() == 2 * max(layer.numel for layer in adapted)
    for layer in adapted:
        with_buffer = layer.survival(schemes, buffer)
        n = layer.numel
        decoded = dequantize_params4bit(layer.linear.weight, widen_to=torch.float32).reshape(-1)
        if torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
            assert torch.equal(buffer[n:2 * n], decoded), "W0 was decoded into the buffer"
        assert with_buffer == layer.survival(schemes), layer.name


def test_cpu_repacking_is_switched_off_and_a_repacked_weight_is_refused(base_dir):
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    model = _four_bit(base_dir, keep=False)
    layer = model.model.layers[0].self_attn.q_proj
    assert keep_4bit_layout(model) == 14 and layer.support_avx512bf16_for_cpu is False
    with torch.no_grad():
        model(IDS)  # eval mode, no gradients: the forward that repacks on AVX512-BF16 CPUs
    assert not getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
    # What an unguarded forward does on such a CPU, made on purpose: scales rounded to bf16, layout changed.
    other = _four_bit(base_dir, keep=False)
    weight = other.model.layers[0].self_attn.q_proj.weight
    weight.data, weight.quant_state = _convert_weight_packed_for_cpu(weight.data, weight.quant_state)
    with pytest.raises(ValueError, match="repacked for bitsandbytes' AVX512-BF16 CPU kernel"):
        dequantize_params4bit(weight)
    with pytest.raises(ValueError, match="model.layers.0.self_attn.q_proj.*already repacked"):
        keep_4bit_layout(other)


def _codes(weight):
    flat = weight.data.reshape(-1)
    return torch.stack([flat >> 4, flat & 15], dim=1).reshape(-1)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_double_quant_base_reads_no_change_without_an_update(base_dir, quant_type):
    """Re-quantizing draws fresh nested (8-bit) scales: the original must be deployed that way too, or a
    zero update reads as most weights changed. Through the survival check's weight statistics and the
    deployed weights the functional check runs."""
    scheme = get_scheme(quant_type)
    model = _qlora(base_dir, quant_type, double_quant=True, scale=0.0)  # lora_B = 0: ΔW = 0
    layers = select_linear_layers(model, None)
    prepare_references(layers, [scheme], {})
    adapted = [layer for layer in layers if layer.lora is not None]
    assert len(adapted) == 6 and all(layer.linear.weight.quant_state.nested for layer in adapted)
    for layer in adapted:
        stats = layer.survival([scheme])[quant_type]
        assert stats.delta_norm == 0.0 and stats.changed == 0.0, layer.name
        assert stats.qdelta_norm == 0.0 and stats.retained == 0.0 and stats.cosine == 0.0, layer.name
        current, original = layer.weight(scheme), layer.weight(scheme, original=True)
        assert torch.equal(current, original), f"{layer.name}: {(current != original).float().mean():.0%} differ"


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_double_quant_statistics_are_those_of_peft_merges(base_dir, quant_type):
    """With an update, changed and ||dQ|| equal what two peft merges give: the adapter's and a zero one's."""
    scheme = get_scheme(quant_type)
    model = _qlora(base_dir, quant_type, double_quant=True, scale=0.05)
    layers = select_linear_layers(model, None)
    prepare_references(layers, [scheme], {})
    stats = {layer.name: layer.survival([scheme])[quant_type] for layer in layers if layer.lora is not None}
    merged = _peft_merged(_qlora(base_dir, quant_type, double_quant=True, scale=0.05))
    zero = _peft_merged(_qlora(base_dir, quant_type, double_quant=True, scale=0.0))
    for name, s in stats.items():
        ours, base = merged.get_submodule(name).weight, zero.get_submodule(name).weight
        changed = (_codes(ours) != _codes(base)).float().mean().item()
        qdelta = (dequantize_params4bit(ours) - dequantize_params4bit(base)).norm().item()
        assert s.changed == pytest.approx(changed, abs=1e-12), name
        assert s.qdelta_norm == pytest.approx(qdelta, rel=1e-5), name
        assert s.changed > 0.01, name


def test_the_recorded_base_names_its_compute_dtype(tmp_path):
    """A base left to compute in the model's dtype is resolved before it is recorded; a record lacking one is
    refused, since export would not know which base to rebuild."""
    assert FourBitBase(compute_dtype=torch.bfloat16).compute_dtype == "bfloat16"
    with pytest.raises(ValueError, match=r"leaves its compute dtype to the model's `dtype`.*resolve it first"):
        FourBitBase().write(tmp_path)
    base = four_bit_base(FourBitBase(double_quant=True), dtype="bfloat16")
    base.write(tmp_path)
    record = json.loads((tmp_path / BASE_QUANTIZATION_FILE).read_text())
    assert record == {"load_in_4bit": True, "quant_type": "nf4", "compute_dtype": "bfloat16", "double_quant": True}
    assert read_four_bit_base(tmp_path) == base
    record.update(compute_dtype=None)
    (tmp_path / BASE_QUANTIZATION_FILE).write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"does not describe a 4-bit base.*Delete it"):
        read_four_bit_base(tmp_path)
