import math

import pytest
import torch
import torch.nn.functional as F

from lit_unlearn.objectives import (
    mean_token_nll,
    scored_positions,
    sequence_logprob,
    sequence_mean_logprob,
    token_logprobs,
)

# B=2, T=3, V=4 with explicit values; the second row has one ignored label.
LOGITS = [
    [[1.0, 2.0, 0.5, -1.0], [0.0, 0.0, 0.0, 0.0], [3.0, -2.0, 1.0, 0.5]],
    [[-1.0, 0.5, 2.5, 0.0], [2.0, 1.0, -1.0, 0.0], [0.3, 0.2, 0.1, 0.0]],
]
LABELS = [[1, 2, 3], [0, -100, 1]]


def manual_logp(logits, b, t, token):
    row = logits[b][t]
    return row[token] - math.log(sum(math.exp(v) for v in row))


@pytest.fixture
def batch():
    return torch.tensor(LOGITS), torch.tensor(LABELS)


def test_token_logprobs_match_hand_computed_values(batch):
    logits, labels = batch
    logp, mask = token_logprobs(logits, labels)

    # Position t predicts labels[:, t + 1]; row 1 position 0 predicts -100 and is not scored.
    expected = [
        [manual_logp(LOGITS, 0, 0, 2), manual_logp(LOGITS, 0, 1, 3)],
        [0.0, manual_logp(LOGITS, 1, 1, 1)],
    ]
    torch.testing.assert_close(logp, torch.tensor(expected), rtol=1e-6, atol=1e-6)
    assert mask.tolist() == [[True, True], [False, True]]
    assert logp.dtype == torch.float32


def test_sequence_logprob_is_sum_of_scored_tokens(batch):
    logits, labels = batch
    expected = [
        manual_logp(LOGITS, 0, 0, 2) + manual_logp(LOGITS, 0, 1, 3),
        manual_logp(LOGITS, 1, 1, 1),
    ]
    torch.testing.assert_close(sequence_logprob(logits, labels), torch.tensor(expected))
    expected_mean = [expected[0] / 2, expected[1] / 1]
    torch.testing.assert_close(sequence_mean_logprob(logits, labels), torch.tensor(expected_mean))


def test_mean_token_nll_pools_tokens_over_batch_like_hf(batch):
    logits, labels = batch
    scored = [manual_logp(LOGITS, 0, 0, 2), manual_logp(LOGITS, 0, 1, 3), manual_logp(LOGITS, 1, 1, 1)]
    expected = -sum(scored) / 3
    torch.testing.assert_close(mean_token_nll(logits, labels), torch.tensor(expected))
    # The Hugging Face causal-LM loss: shift, then cross-entropy with ignore_index=-100.
    hf = F.cross_entropy(logits[:, :-1].reshape(-1, 4), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(mean_token_nll(logits, labels), hf)


def test_masked_labels_get_no_gradient(batch):
    logits, labels = batch
    logits = logits.clone().requires_grad_(True)
    mean_token_nll(logits, labels).backward()
    # Row 1, position 0 predicts an ignored label; the last position predicts nothing.
    assert torch.count_nonzero(logits.grad[1, 0]) == 0
    assert torch.count_nonzero(logits.grad[:, -1]) == 0
    assert torch.count_nonzero(logits.grad[0, 0]) == 4


def test_custom_ignore_index(batch):
    logits, _ = batch
    logp, mask = token_logprobs(logits, torch.tensor([[1, 2, 3], [0, -1, 1]]), ignore_index=-1)
    assert mask.tolist() == [[True, True], [False, True]]
    torch.testing.assert_close(logp, token_logprobs(logits, torch.tensor(LABELS))[0])


def test_bf16_logits_are_scored_in_fp32(batch):
    logits, labels = batch
    logp, _ = token_logprobs(logits.to(torch.bfloat16), labels)
    assert logp.dtype == torch.float32
    torch.testing.assert_close(logp, token_logprobs(logits.to(torch.bfloat16).float(), labels)[0])


def test_all_ignored_gives_zero_not_nan():
    logits = torch.randn(2, 3, 5)
    labels = torch.full((2, 3), -100)
    assert mean_token_nll(logits, labels).item() == 0.0
    assert sequence_logprob(logits, labels).tolist() == [0.0, 0.0]


def test_scored_positions_uses_unshifted_labels():
    labels = torch.tensor([[5, -100, 3]])
    assert scored_positions(labels).tolist() == [[True, False, True]]


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"`logits` must have shape \(batch, seq_len, vocab\), got \(3, 4\)"):
        token_logprobs(torch.zeros(3, 4), torch.zeros(3, dtype=torch.long))
    message = r"`labels` must have shape \(batch, seq_len\) = \(2, 3\).*got \(2, 4\)"
    with pytest.raises(ValueError, match=message):
        token_logprobs(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
