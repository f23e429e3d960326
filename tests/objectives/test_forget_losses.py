import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_unlearn.objectives import NPO, GradAscent, SimNPO, npo_initial_value, sequence_logprob

# B=2, T=3, V=4: the model's and the reference's logits, explicit.
LOGITS = [
    [[1.0, 2.0, 0.5, -1.0], [0.0, 0.5, 0.0, 1.0], [3.0, -2.0, 1.0, 0.5]],
    [[-1.0, 0.5, 2.5, 0.0], [2.0, 1.0, -1.0, 0.0], [0.3, 0.2, 0.1, 0.0]],
]
REF_LOGITS = [
    [[0.5, 1.0, 1.5, -0.5], [1.0, 0.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]],
    [[0.0, 0.0, 1.0, 0.0], [1.0, 2.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]],
]
LABELS = [[1, 2, 3], [0, 1, 2]]


def logp(logits, b, t, token):
    row = logits[b][t]
    return row[token] - math.log(sum(math.exp(v) for v in row))


def seq_logp(logits, labels, b):
    return sum(logp(logits, b, t, labels[b][t + 1]) for t in range(len(labels[b]) - 1))


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def tensors():
    return torch.tensor(LOGITS), torch.tensor(LABELS), torch.tensor(REF_LOGITS)


def test_grad_ascent_is_negated_mean_token_nll():
    logits, labels, _ = tensors()
    nll = -sum(seq_logp(LOGITS, LABELS, b) for b in range(2)) / 4
    out = GradAscent()(logits, labels)
    torch.testing.assert_close(out.loss, torch.tensor(-nll))
    torch.testing.assert_close(out.metrics["nll"], torch.tensor(nll))
    assert not GradAscent.needs_reference


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
@pytest.mark.parametrize("form", ["sequence", "logits"])
def test_npo_at_reference_equals_two_over_beta_ln2(beta, form):
    logits = torch.randn(3, 6, 11)
    labels = torch.randint(0, 11, (3, 6))
    labels[1, :2] = -100
    out = NPO(beta=beta, form=form)(logits, labels, ref_logits=logits.clone())
    expected = torch.tensor(2.0 / beta * math.log(2.0))
    torch.testing.assert_close(out.loss, expected, rtol=1e-6, atol=0.0)
    assert out.loss.item() == pytest.approx(npo_initial_value(beta), rel=1e-6)
    assert out.metrics["log_ratio"].item() == 0.0


def test_npo_sequence_form_matches_hand_computed_value():
    logits, labels, ref = tensors()
    beta = 0.1
    per_sequence = []
    for b in range(2):
        log_ratio = seq_logp(LOGITS, LABELS, b) - seq_logp(REF_LOGITS, LABELS, b)
        per_sequence.append(-(2 / beta) * log_sigmoid(-beta * log_ratio))
    out = NPO(beta=beta)(logits, labels, ref_logits=ref)
    torch.testing.assert_close(out.loss, torch.tensor(sum(per_sequence) / 2))
    mean_ratio = sum(seq_logp(LOGITS, LABELS, b) - seq_logp(REF_LOGITS, LABELS, b) for b in range(2)) / 2
    torch.testing.assert_close(out.metrics["log_ratio"], torch.tensor(mean_ratio))


def test_npo_logits_form_reproduces_muse_code():
    logits, labels, ref = tensors()
    beta = 0.1
    # The MUSE baseline code, verbatim in substance: raw logits, mean over all B·T·V entries.
    muse = -F.logsigmoid(beta * (ref - logits)).mean() * 2 / beta
    out = NPO(beta=beta, form="logits")(logits, labels, ref_logits=ref)
    torch.testing.assert_close(out.loss, muse)
    entries = [
        -(2 / beta) * log_sigmoid(beta * (REF_LOGITS[b][t][v] - LOGITS[b][t][v]))
        for b in range(2)
        for t in range(3)
        for v in range(4)
    ]
    torch.testing.assert_close(out.loss, torch.tensor(sum(entries) / len(entries)))


def test_npo_logits_form_leaves_out_ignored_positions():
    logits, labels, ref = tensors()
    labels = labels.clone()
    labels[1, 2] = -100
    out = NPO(beta=0.1, form="logits")(logits, labels, ref_logits=ref)
    keep = torch.ones(2, 3, dtype=torch.bool)
    keep[1, 2] = False
    expected = -F.logsigmoid(0.1 * (ref - logits)[keep]).mean() * 2 / 0.1
    torch.testing.assert_close(out.loss, expected)


def test_npo_gradient_at_reference_is_the_summed_log_likelihood_gradient():
    # d/dr [−(2/β) log σ(−βr)] = 2σ(βr) = 1 at r = 0, so NPO starts as ascent on mean_x log π(x).
    logits = torch.randn(2, 5, 7, requires_grad=True)
    labels = torch.randint(0, 7, (2, 5))
    NPO(beta=0.1)(logits, labels, ref_logits=logits.detach().clone()).loss.backward()
    expected = torch.autograd.grad(sequence_logprob(logits, labels).mean(), logits)[0]
    torch.testing.assert_close(logits.grad, expected)


def test_npo_reference_gets_no_gradient():
    logits = torch.randn(2, 4, 5, requires_grad=True)
    ref = torch.randn(2, 4, 5, requires_grad=True)
    labels = torch.randint(0, 5, (2, 4))
    NPO()(logits, labels, ref_logits=ref).loss.backward()
    assert ref.grad is None


def test_npo_needs_reference_logits():
    logits, labels, _ = tensors()
    assert NPO.needs_reference
    with pytest.raises(ValueError, match=r"NPO needs `ref_logits`.*adapter disabled"):
        NPO()(logits, labels)
    message = r"`ref_logits` has shape \(2, 3, 5\) but `logits` has shape \(2, 3, 4\)"
    with pytest.raises(ValueError, match=message):
        NPO()(logits, labels, ref_logits=torch.zeros(2, 3, 5))


def test_npo_rejects_bad_arguments():
    message = r"`form`='seq' is not supported; choose one of 'sequence', 'logits'"
    with pytest.raises(ValueError, match=message):
        NPO(form="seq")
    with pytest.raises(ValueError, match=r"`beta` must be a finite number > 0, got -0.1"):
        NPO(beta=-0.1)


@pytest.mark.parametrize(("beta", "delta"), [(2.5, 0.0), (0.75, 2.25), (4.5, -1.0)])
def test_simnpo_matches_hand_computed_value(beta, delta):
    logits, labels, _ = tensors()
    per_sequence = []
    for b in range(2):
        mean_logprob = seq_logp(LOGITS, LABELS, b) / 2
        per_sequence.append(-(2 / beta) * log_sigmoid(-beta * mean_logprob - delta))
    out = SimNPO(beta=beta, delta=delta)(logits, labels)
    torch.testing.assert_close(out.loss, torch.tensor(sum(per_sequence) / 2))
    assert not SimNPO.needs_reference


def test_simnpo_length_normalises_per_sequence():
    # Two sequences with different numbers of scored tokens: each is averaged over its own tokens.
    logits, labels, _ = tensors()
    labels = labels.clone()
    labels[1, 1] = -100
    means = [seq_logp(LOGITS, LABELS, 0) / 2, logp(LOGITS, 1, 1, LABELS[1][2])]
    expected = sum(-(2 / 2.5) * log_sigmoid(-2.5 * m) for m in means) / 2
    out = SimNPO()(logits, labels)
    torch.testing.assert_close(out.loss, torch.tensor(expected))
    torch.testing.assert_close(out.metrics["mean_logprob"], torch.tensor(sum(means) / 2))


def test_simnpo_logits_form_reproduces_authors_muse_code():
    logits, labels, _ = tensors()
    beta, gamma = 0.75, 3.0
    # Unlearn-Simple MUSE code: -logsigmoid(beta * (-logits - gamma)).mean() * 2 / beta; delta = beta * gamma.
    authors = -F.logsigmoid(beta * (-logits - gamma)).mean() * 2 / beta
    out = SimNPO(beta=beta, delta=beta * gamma, form="logits")(logits, labels)
    torch.testing.assert_close(out.loss, authors)


def test_simnpo_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"`delta` must be a finite number, got nan"):
        SimNPO(delta=float("nan"))
    with pytest.raises(ValueError, match=r"choose one of 'sequence', 'logits'"):
        SimNPO(form="mean")


class TinyLM(nn.Module):
    """Bigram "LM": logits of the next token depend on the current token only."""

    def __init__(self, vocab: int = 8, hidden: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, ids):
        return self.head(self.embed(ids))


@pytest.mark.parametrize("method", ["ga", "npo", "simnpo"])
def test_a_gradient_step_lowers_forget_likelihood(method):
    torch.manual_seed(0)
    model = TinyLM()
    reference = TinyLM()
    reference.load_state_dict(model.state_dict())
    ids = torch.randint(0, 8, (4, 6))
    loss_fn = {"ga": GradAscent(), "npo": NPO(beta=0.1), "simnpo": SimNPO()}[method]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)

    with torch.no_grad():
        before = sequence_logprob(model(ids), ids)
    for _ in range(3):
        optimizer.zero_grad()
        with torch.no_grad():
            ref_logits = reference(ids)
        loss_fn(model(ids), ids, ref_logits).loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = sequence_logprob(model(ids), ids)
    assert (after < before).all()
