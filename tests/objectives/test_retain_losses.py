import math

import pytest
import torch
import torch.nn.functional as F

from lit_unlearn.objectives import GDR, KLR, token_kl

# B=1, T=3, V=3, explicit.
LOGITS = [[[1.0, 0.0, -1.0], [0.5, 0.5, 2.0], [0.0, 1.0, 0.0]]]
REF_LOGITS = [[[0.0, 0.0, 0.0], [2.0, 0.0, 1.0], [1.0, 1.0, 3.0]]]
LABELS = [[0, 1, 2]]


def softmax(row):
    z = sum(math.exp(v) for v in row)
    return [math.exp(v) / z for v in row]


def kl(p_row, q_row):
    p, q = softmax(p_row), softmax(q_row)
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def tensors():
    return torch.tensor(LOGITS), torch.tensor(LABELS), torch.tensor(REF_LOGITS)


def test_gdr_is_mean_token_nll():
    logits, labels, _ = tensors()
    nll = -(math.log(softmax(LOGITS[0][0])[1]) + math.log(softmax(LOGITS[0][1])[2])) / 2
    out = GDR()(logits, labels)
    torch.testing.assert_close(out.loss, torch.tensor(nll))
    torch.testing.assert_close(out.metrics["nll"], torch.tensor(nll))
    assert not GDR.needs_reference


def test_klr_matches_hand_computed_per_token_kl():
    logits, labels, ref = tensors()
    # Positions 0 and 1 predict labels 1 and 2; the last position predicts nothing.
    expected = (kl(REF_LOGITS[0][0], LOGITS[0][0]) + kl(REF_LOGITS[0][1], LOGITS[0][1])) / 2
    out = KLR()(logits, labels, ref_logits=ref)
    torch.testing.assert_close(out.loss, torch.tensor(expected))
    torch.testing.assert_close(out.metrics["kl"], torch.tensor(expected))
    assert KLR.needs_reference


def test_klr_ignores_masked_retain_tokens():
    logits, labels, ref = tensors()
    labels = torch.tensor([[0, -100, 2]])
    expected = kl(REF_LOGITS[0][1], LOGITS[0][1])
    torch.testing.assert_close(KLR()(logits, labels, ref_logits=ref).loss, torch.tensor(expected))


@pytest.mark.parametrize("form", ["probs", "logits"])
def test_klr_is_exactly_zero_at_identical_logits(form):
    logits = torch.randn(3, 7, 13, requires_grad=True)
    labels = torch.randint(0, 13, (3, 7))
    labels[0, 3:] = -100
    out = KLR(form=form)(logits, labels, ref_logits=logits.detach().clone())
    assert out.loss.item() == 0.0
    assert out.metrics["kl"].item() == 0.0
    out.loss.backward()
    if form == "probs":
        # KL is minimal at p_θ = p_ref, so the gradient vanishes there.
        torch.testing.assert_close(logits.grad, torch.zeros_like(logits), atol=1e-7, rtol=0)


def test_klr_logits_form_reproduces_muse_code():
    logits, labels, ref = tensors()
    muse = F.kl_div(logits, ref, reduction="batchmean", log_target=True)
    out = KLR(form="logits")(logits, labels, ref_logits=ref)
    torch.testing.assert_close(out.loss, muse)
    by_hand = sum(
        math.exp(REF_LOGITS[0][t][v]) * (REF_LOGITS[0][t][v] - LOGITS[0][t][v])
        for t in range(3)
        for v in range(3)
    )
    torch.testing.assert_close(out.loss, torch.tensor(by_hand))
    # The logged `kl` stays the real divergence between next-token distributions.
    torch.testing.assert_close(out.metrics["kl"], token_kl(logits, ref, labels))


def test_klr_logits_form_leaves_out_ignored_positions_and_divides_by_batch():
    logits = torch.randn(2, 4, 5)
    ref = torch.randn(2, 4, 5)
    labels = torch.randint(0, 5, (2, 4))
    labels[1, 0] = -100
    keep = labels != -100
    elementwise = torch.exp(ref) * (ref - logits)
    expected = elementwise[keep].sum() / 2
    torch.testing.assert_close(KLR(form="logits")(logits, labels, ref_logits=ref).loss, expected)


def test_klr_needs_reference_and_valid_form():
    logits, labels, _ = tensors()
    with pytest.raises(ValueError, match=r"KLR needs `ref_logits`"):
        KLR()(logits, labels)
    with pytest.raises(ValueError, match=r"`form`='kl' is not supported; choose one of 'probs', 'logits'"):
        KLR(form="kl")
