"""The fake quantizer against real bitsandbytes kernels (CUDA only)."""

import pytest
import torch

from lit_unlearn.adapters import LoRA, apply_lora, lora_deltas
from lit_unlearn.evaluation import EvalData, deployed_weights, evaluate, load_bitsandbytes, min_k_scores
from lit_unlearn.quantization import fake_quantize

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="bitsandbytes kernels need a CUDA device"),
]


@pytest.fixture()
def cuda_lora(llama):
    model = apply_lora(llama, LoRA(r=4, alpha=8.0, dropout=0.0))
    generator = torch.Generator().manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=generator) * 0.05
    return model.cuda().eval()


@pytest.mark.parametrize("precision", ["nf4", "fp4"])
def test_bitsandbytes_4bit_weights_equal_fake_quantized_merge(cuda_lora, precision):
    import bitsandbytes.functional as bnbf

    loaded = load_bitsandbytes(cuda_lora, precision)
    merged = {name: w0 + delta for name, w0, delta in lora_deltas(cuda_lora)}
    modules = dict(loaded.named_modules())
    for name, weight in merged.items():
        layer = modules[name]
        real = bnbf.dequantize_4bit(layer.weight.data, layer.weight.quant_state).to(weight.dtype)
        assert torch.equal(real, fake_quantize(weight, precision)), name


@pytest.mark.parametrize("precision", ["nf4", "fp4", "int8"])
def test_fake_and_bitsandbytes_quantizers_give_the_same_metrics(cuda_lora, tokenizer, muse_dir, precision):
    data = EvalData.load(muse_dir)
    options = {
        "precision": precision,
        "auc_retrain": 0.5,
        "verbmem_max_new_tokens": 16,
        "knowmem_max_new_tokens": 8,
        "progress": False,
    }
    fake = evaluate(cuda_lora, tokenizer, data, quantizer="fake", **options)
    real = evaluate(cuda_lora, tokenizer, data, quantizer="bitsandbytes", **options)
    assert fake.keys() == real.keys()
    # 4-bit weights are bit-identical, so only kernel rounding differs (bitsandbytes' single-token gemv
    # path included); LLM.int8 also quantizes activations and keeps outlier features in fp16, so 8-bit
    # agrees more loosely.
    four_bit = precision != "int8"
    rtol = 1e-3 if four_bit else 5e-2
    loaded = load_bitsandbytes(cuda_lora, precision)
    texts = data.privleak_forget + data.privleak_holdout
    with deployed_weights(cuda_lora, precision) as deployed:
        fake_scores = min_k_scores(deployed, tokenizer, texts, progress=False)
    real_scores = min_k_scores(loaded, tokenizer, texts, progress=False)
    torch.testing.assert_close(real_scores, fake_scores, rtol=rtol, atol=rtol)
    assert abs(fake["auc"] - real["auc"]) <= (0.06 if four_bit else 0.15)
    for key in ("verbmem_forget", "knowmem_forget", "knowmem_retain"):
        assert abs(fake[key] - real[key]) <= (5.0 if four_bit else 25.0), key
