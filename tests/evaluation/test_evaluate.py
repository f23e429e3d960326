import copy

import pytest
import torch
from peft.tuners.lora import LoraLayer

from lit_unlearn.adapters import LoRA, apply_lora
from lit_unlearn.deployment import quantize_model_
from lit_unlearn.evaluation import (
    PRECISIONS,
    QA,
    Continuation,
    EvalData,
    deployed_weights,
    evaluate,
    truncate_tokens,
)
from lit_unlearn.metrics import rouge_l_f1

# Short generations keep the tiny model fast; the protocol's 128/32 tokens are the defaults.
FAST = {"verbmem_max_new_tokens": 6, "knowmem_max_new_tokens": 4, "batch_size": 4, "progress": False}


@pytest.fixture()
def lora_llama(llama):
    """A LoRA model whose adapter is not zero (peft starts B at 0), so ΔW is as large as the weights."""
    model = apply_lora(llama, LoRA(r=4, alpha=8.0, dropout=0.05))
    generator = torch.Generator().manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=generator) * 0.05
    return model


@pytest.fixture(scope="module")
def small_data(muse_dir):
    return EvalData.load(muse_dir, max_items=3)


def _ids(tokenizer):
    return torch.tensor([tokenizer("river stone north mayor harbour council")["input_ids"]])


def _snapshot(model):
    return {n: (p, p.data_ptr(), p.detach().clone()) for n, p in model.named_parameters()}


def _assert_restored(model, snapshot, modes):
    for name, param in model.named_parameters():
        same, ptr, value = snapshot[name]
        assert param is same and param.data_ptr() == ptr and torch.equal(param, value), name
    assert {n: m.training for n, m in model.named_modules()} == modes


@pytest.mark.parametrize("precision", PRECISIONS)
def test_deployed_lora_equals_merge_and_unload_then_quantize(lora_llama, tokenizer, precision):
    merged = copy.deepcopy(lora_llama).merge_and_unload().eval()
    if precision == "int8":
        # LLM.int8 quantizes activations too: the reference is bitsandbytes' own Linear8bitLt layers.
        _to_bitsandbytes_int8(merged)
    elif precision != "full":
        quantize_model_(merged, precision)
    lora_llama.eval()
    ids = _ids(tokenizer)
    with torch.no_grad(), deployed_weights(lora_llama, precision) as deployed:
        got = deployed(input_ids=ids).logits
        expected = merged(input_ids=ids).logits
    if precision == "full":  # the adapter path W0 x + ΔW x equals the merge up to float rounding
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(got, expected)


def _to_bitsandbytes_int8(model):
    """Every linear layer but the head as a ``load_in_8bit`` layer: bitsandbytes' ``Linear8bitLt`` (int8
    weights, threshold 6.0), which in eval mode runs the same ``MatMul8bitLt`` on CPU as on CUDA."""
    import bitsandbytes as bnb

    head = model.get_output_embeddings()
    for name, linear in list(model.named_modules()):
        if type(linear) is not torch.nn.Linear or linear is head:
            continue
        int8 = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                   has_fp16_weights=False, threshold=6.0)
        int8.load_state_dict(linear.state_dict())
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, int8.to("cpu").eval())


def test_merge_happens_before_quantization(lora_llama, tokenizer):
    """Q(W0 + ΔW), as deployment computes, is not Q(W0) + ΔW (a LoRA adapter on a quantized base)."""
    lora_llama.eval()
    ids = _ids(tokenizer)
    adapter_on_quantized_base = copy.deepcopy(lora_llama)
    quantize_model_(adapter_on_quantized_base, "nf4")  # quantizes base layers, not lora_A/lora_B
    with torch.no_grad(), deployed_weights(lora_llama, "nf4") as deployed:
        merged_first = deployed(input_ids=ids).logits
        full = lora_llama(input_ids=ids).logits  # inside the context the adapter is off and weights quantized
        base_first = adapter_on_quantized_base(input_ids=ids).logits
    with torch.no_grad():
        unquantized = lora_llama(input_ids=ids).logits
    assert not torch.equal(merged_first, base_first)
    assert not torch.equal(merged_first, unquantized)
    assert torch.equal(merged_first, full)


def test_evaluate_lora_equals_evaluate_of_its_quantized_merge(lora_llama, tokenizer, small_data):
    merged = copy.deepcopy(lora_llama).merge_and_unload()
    quantize_model_(merged, "nf4")
    got = evaluate(lora_llama, tokenizer, small_data, precision="nf4", auc_retrain=0.5, **FAST)
    expected = evaluate(merged, tokenizer, small_data, precision="full", auc_retrain=0.5, **FAST)
    assert got == expected
    assert set(got) == {"verbmem_forget", "knowmem_forget", "knowmem_retain", "privleak", "auc"}
    assert 0.0 <= got["auc"] <= 1.0 and all(
        0.0 <= got[k] <= 100.0 for k in ("verbmem_forget", "knowmem_retain")
    )
    assert got["privleak"] == pytest.approx((got["auc"] - 0.5) / 0.5 * 100)


def test_model_is_restored_exactly_after_evaluation_and_on_error(lora_llama, tokenizer, small_data):
    lora_llama.train()
    lora_llama.base_model.model.model.layers[0].eval()  # mixed modes must come back as they were
    modes = {n: m.training for n, m in lora_llama.named_modules()}
    snapshot = _snapshot(lora_llama)
    evaluate(lora_llama, tokenizer, small_data, precision="int4", tasks=["privleak"], auc_retrain=0.5, **FAST)
    _assert_restored(lora_llama, snapshot, modes)
    lora_layers = [m for m in lora_llama.modules() if isinstance(m, LoraLayer)]
    assert lora_layers and not any(layer.disable_adapters for layer in lora_layers)  # adapter on again
    with pytest.raises(RuntimeError, match="boom"), deployed_weights(lora_llama, "fp4"):
        raise RuntimeError("boom")
    _assert_restored(lora_llama, snapshot, modes)


def test_plain_model_quantizes_linear_layers_but_not_the_output_head(llama):
    head, up = (
        llama.lm_head.weight.detach().clone(),
        llama.model.layers[0].mlp.up_proj.weight.detach().clone(),
    )
    with deployed_weights(llama, "int4") as deployed:
        assert torch.equal(deployed.lm_head.weight, head)
        assert not torch.equal(deployed.model.layers[0].mlp.up_proj.weight, up)
    assert torch.equal(llama.model.layers[0].mlp.up_proj.weight, up)


def test_open_unlearning_convention_falls_back_to_auc_half(llama, tokenizer, small_data):
    out = evaluate(llama, tokenizer, small_data, convention="open-unlearning", tasks=["privleak"], **FAST)
    assert set(out) == {"privleak", "auc"}
    assert out["privleak"] == pytest.approx((out["auc"] - 0.5) / 0.5 * 100)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"precision": "int9"},
            "`precision`='int9' is not supported; choose one of 'full', 'int8', 'nf4', 'fp4', 'int4', 'int2'",
        ),
        ({"precision": "int4", "quantizer": "bitsandbytes"}, "bitsandbytes has no int4 round-to-nearest"),
        ({"quantizer": "gptq"}, "`quantizer`='gptq' is not supported; choose one of 'fake', 'bitsandbytes'"),
        ({"convention": "tofu"}, "`convention`='tofu' is not supported"),
        ({"tasks": ["verbmem"]}, "unknown: \\['verbmem'\\]"),
        ({"auc_retrain": 1.5}, "must be an AUC in \\(0, 1\\]"),
    ],
)
def test_bad_arguments_are_named(llama, tokenizer, small_data, kwargs, message):
    with pytest.raises(ValueError, match=message):
        evaluate(llama, tokenizer, small_data, **kwargs)


def test_verbmem_ground_truth_is_cut_under_muse_only(llama, tokenizer, monkeypatch):
    """A model that continues every excerpt with its whole true continuation: 100 under
    open-unlearning, less under muse, whose reference is only the first 128 tokens."""
    import lit_unlearn.evaluation.protocol as module

    gt = " ".join(["harbour council bridge seven lantern"] * 60)
    data = EvalData(
        [Continuation("alpha beta", gt)], [QA("q", "a")], [], [QA("q", "a")], [], ["x y"], ["y x"]
    )
    monkeypatch.setattr(module, "generate_greedy", lambda model, tok, prompts, *args, **kwargs: [gt] * len(prompts))
    scores = {
        convention: evaluate(llama, tokenizer, data, convention=convention, tasks=["verbmem_forget"], **FAST)
        for convention in ("muse", "open-unlearning")
    }
    assert scores["open-unlearning"]["verbmem_forget"] == 100.0
    cut = truncate_tokens(tokenizer, [gt], 128)[0]
    assert scores["muse"]["verbmem_forget"] == pytest.approx(100 * rouge_l_f1(gt, cut))
    assert scores["muse"]["verbmem_forget"] < 90.0
