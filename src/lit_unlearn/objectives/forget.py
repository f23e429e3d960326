"""Forget losses: what unlearning minimises on the forget set.

Each loss is a small stateless callable ``loss(logits, labels, ref_logits=None) -> LossOutput``. Logits
and labels follow the Hugging Face causal-LM convention (see :mod:`lit_unlearn.objectives.logprobs`); all
arithmetic happens in float32.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_unlearn.objectives.interface import (
    LossOutput,
    check_choice,
    check_finite,
    check_positive,
    require_reference,
)
from lit_unlearn.objectives.logprobs import IGNORE_INDEX, scored_positions, token_logprobs

NPO_FORMS: tuple[str, ...] = ("sequence", "logits")
SIMNPO_FORMS: tuple[str, ...] = ("sequence", "logits")


def _mean_over_scored_sequences(per_sequence: Tensor, token_counts: Tensor) -> Tensor:
    # A sequence with no scored token (a padding-only row) carries no information about the forget set;
    # counting it would add a constant to the loss and shrink the weight of the real sequences.
    scored = token_counts > 0
    return torch.where(scored, per_sequence, 0.0).sum() / scored.sum().clamp_min(1)


def _mean_over_positions(values: Tensor, positions: Tensor) -> Tensor:
    # `values` is (B, T, V); the mean runs over every vocabulary entry of the selected positions, as
    # `Tensor.mean()` does in the MUSE code. `torch.where` rather than boolean indexing avoids a host sync.
    selected = torch.where(positions.unsqueeze(-1), values, 0.0)
    return selected.sum() / (positions.sum() * values.shape[-1]).clamp_min(1)


def _raw_logits_npo_term(beta: float, margin_logits: Tensor, positions: Tensor) -> Tensor:
    return -(2.0 / beta) * _mean_over_positions(F.logsigmoid(beta * margin_logits), positions)


class GradAscent:
    """Gradient ascent on the forget set: ``L = −NLL(x_f)``, the mean token cross-entropy negated.

    Reference: Jang et al., "Knowledge Unlearning for Mitigating Privacy Risks in Language Models",
    ACL 2023, arXiv:2210.01504; the ``GA`` baseline of MUSE (Shi et al., arXiv:2407.06460).

    The loss is unbounded below, which is why GA is paired with a heavily weighted retain term
    (``α = 100`` in the quantization papers' MUSE runs) or early stopping.

    Metrics: ``nll`` (mean token NLL of the forget batch).

    Example::

        >>> import torch
        >>> logits, labels = torch.zeros(1, 3, 4), torch.tensor([[0, 1, 2]])
        >>> round(GradAscent()(logits, labels).loss.item(), 4)  # −ln 4
        -1.3863
    """

    needs_reference: bool = False

    def __call__(self, logits: Tensor, labels: Tensor, ref_logits: Tensor | None = None) -> LossOutput:
        logp, mask = token_logprobs(logits, labels)
        nll = -logp.sum() / mask.sum().clamp_min(1)
        return LossOutput(loss=-nll, metrics={"nll": nll.detach()})

    def __repr__(self) -> str:
        return "GradAscent()"


class NPO:
    """Negative Preference Optimization.

    ``L = −(2/β) · mean_x log σ(−β · [log π_θ(x) − log π_ref(x)])`` with ``log π(x)`` the *summed* token
    log-likelihood of a forget sequence. It equals ``(2/β) · ln 2`` when ``π_θ = π_ref`` and, unlike GA,
    is bounded below by 0, so the forget term saturates instead of diverging.

    Reference: Zhang, Lin, Bai, Mei, "Negative Preference Optimization: From Catastrophic Collapse to
    Effective Unlearning", COLM 2024, arXiv:2404.05868.

    Args:
        beta: inverse temperature ``β`` > 0. The NPO and MUSE papers use 0.1.
        form: ``"sequence"`` computes the paper's formula above. ``"logits"`` reproduces the loss that
            MUSE's released baseline code (``muse_bench``, ``baselines/iterative.py``) computes instead:
            ``−(2/β) · mean log σ(β · (z_ref − z_θ))`` taken elementwise over the *raw logits* ``z`` of
            shape ``(B, T, V)``, averaged over every vocabulary entry of every position — no softmax, no
            label gathering, no sequence sum. That is not the paper's objective (it pushes every logit of
            the vocabulary down, not the likelihood of the forget text) but it is what produced MUSE's
            published NPO numbers; use it only to compare against them. Positions whose own label is
            ``-100`` are left out of the mean; with MUSE's collation (``labels == input_ids``, no
            padding) that is exactly the code's ``.mean()`` over all ``B · T · V`` entries.

    Metrics: ``nll`` (mean token NLL of the forget batch), ``log_ratio`` (batch mean of
    ``log π_θ(x) − log π_ref(x)``, summed over tokens, whichever ``form``).

    Raises:
        ValueError: if ``beta`` is not a finite number > 0 or ``form`` is not one of ``NPO_FORMS``.

    Example::

        >>> import math, torch
        >>> logits, labels = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
        >>> out = NPO(beta=0.1)(logits, labels, ref_logits=logits.clone())
        >>> math.isclose(out.loss.item(), 20 * math.log(2), rel_tol=1e-6)
        True
    """

    needs_reference: bool = True

    def __init__(self, beta: float = 0.1, form: Literal["sequence", "logits"] = "sequence") -> None:
        check_positive("beta", beta)
        check_choice("form", form, NPO_FORMS)
        self.beta = float(beta)
        self.form = form

    def __call__(self, logits: Tensor, labels: Tensor, ref_logits: Tensor | None = None) -> LossOutput:
        ref_logits = require_reference("NPO", ref_logits, logits)
        with torch.no_grad():
            ref_logp, _ = token_logprobs(ref_logits, labels)
        if self.form == "sequence":
            logp, mask = token_logprobs(logits, labels)
            counts = mask.sum(dim=-1)
            log_ratio = logp.sum(dim=-1) - ref_logp.sum(dim=-1)
            per_sequence = -(2.0 / self.beta) * F.logsigmoid(-self.beta * log_ratio)
            loss = _mean_over_scored_sequences(per_sequence, counts)
        else:
            positions = scored_positions(labels, IGNORE_INDEX)
            loss = _raw_logits_npo_term(self.beta, ref_logits.float() - logits.float(), positions)
            # The metrics below are diagnostics only; keep them out of the autograd graph.
            with torch.no_grad():
                logp, mask = token_logprobs(logits, labels)
                counts = mask.sum(dim=-1)
                log_ratio = logp.sum(dim=-1) - ref_logp.sum(dim=-1)
        nll = -logp.sum() / counts.sum().clamp_min(1)
        metrics = {
            "nll": nll.detach(),
            "log_ratio": _mean_over_scored_sequences(log_ratio, counts).detach(),
        }
        return LossOutput(loss=loss, metrics=metrics)

    def __repr__(self) -> str:
        return f"NPO(beta={self.beta}, form={self.form!r})"


class SimNPO:
    """Simple NPO: reference-free, length-normalised NPO.

    ``L = −(2/β) · mean_x log σ(−β · (log π_θ(x) / |x|) − δ)`` with ``|x|`` the number of scored tokens,
    i.e. NPO with the reference term dropped, the sequence log-likelihood replaced by its per-token mean,
    and a reward margin ``δ``.

    Reference: Fan, Liu, Lin, Jia, Zhang, Mei, Liu, "Simplicity Prevails: Rethinking Negative Preference
    Optimization for LLM Unlearning", arXiv:2410.07163, where the margin is called ``γ``.

    Args:
        beta: inverse temperature ``β`` > 0. Default 2.5: the authors' TOFU forget05 setting, the one
            published for this length-normalised formula (forget10 uses 4.5). Their MUSE settings
            (``β`` 0.75 News / 0.7 Books) belong to the raw-logit form below and do not transfer.
        delta: reward margin ``δ`` (paper ``γ``), applied outside ``β`` as in the paper's equation. The
            authors' released code subtracts its margin *before* multiplying by ``β``
            (``σ(β · (−m − gamma))``), so their ``gamma`` equals ``δ / β`` here: MUSE-News
            (``β=0.75, gamma=3.0``) is ``delta=2.25``. Default 0.0, their TOFU and MUSE-Books value.
        form: ``"sequence"`` is the formula above. ``"logits"`` reproduces the authors' MUSE code
            (``Unlearn-Simple/MUSE/baselines/baselines/iterative.py``), which inherits MUSE's raw-logit
            quirk: ``−(2/β) · mean log σ(−β · z_θ − δ)`` elementwise over the raw logits ``(B, T, V)``,
            with no softmax, no label gathering and no length normalisation; positions are selected as
            in :class:`NPO`'s ``"logits"`` form. Use it only to compare with their MUSE numbers.

    Metrics: ``nll`` (mean token NLL of the forget batch), ``mean_logprob`` (batch mean of
    ``log π_θ(x) / |x|``).

    Raises:
        ValueError: if ``beta`` is not a finite number > 0, ``delta`` is not finite, or ``form`` is not
            one of ``SIMNPO_FORMS``.

    Example::

        >>> import math, torch
        >>> logits, labels = torch.zeros(1, 3, 4), torch.tensor([[0, 1, 2]])  # mean log-prob −ln 4
        >>> out = SimNPO(beta=2.5, delta=0.0)(logits, labels)
        >>> math.isclose(out.loss.item(), -(2 / 2.5) * math.log(1 / (1 + 4 ** -2.5)), rel_tol=1e-6)
        True
    """

    needs_reference: bool = False

    def __init__(
        self, beta: float = 2.5, delta: float = 0.0, form: Literal["sequence", "logits"] = "sequence"
    ) -> None:
        check_positive("beta", beta)
        check_finite("delta", delta)
        check_choice("form", form, SIMNPO_FORMS)
        self.beta = float(beta)
        self.delta = float(delta)
        self.form = form

    def __call__(self, logits: Tensor, labels: Tensor, ref_logits: Tensor | None = None) -> LossOutput:
        if self.form == "sequence":
            logp, mask = token_logprobs(logits, labels)
            counts = mask.sum(dim=-1)
            mean_logprob = logp.sum(dim=-1) / counts.clamp_min(1)
            per_sequence = -(2.0 / self.beta) * F.logsigmoid(-self.beta * mean_logprob - self.delta)
            loss = _mean_over_scored_sequences(per_sequence, counts)
        else:
            positions = scored_positions(labels, IGNORE_INDEX)
            # −β·z − δ = β·(−z − δ/β): the margin enters as in the sequence form.
            loss = _raw_logits_npo_term(self.beta, -logits.float() - self.delta / self.beta, positions)
            with torch.no_grad():
                logp, mask = token_logprobs(logits, labels)
                counts = mask.sum(dim=-1)
                mean_logprob = logp.sum(dim=-1) / counts.clamp_min(1)
        nll = -logp.sum() / counts.sum().clamp_min(1)
        metrics = {
            "nll": nll.detach(),
            "mean_logprob": _mean_over_scored_sequences(mean_logprob, counts).detach(),
        }
        return LossOutput(loss=loss, metrics=metrics)

    def __repr__(self) -> str:
        return f"SimNPO(beta={self.beta}, delta={self.delta}, form={self.form!r})"


def npo_initial_value(beta: float) -> float:
    """``(2/β) · ln 2``: the NPO loss (either form) while the model still equals the reference.

    Logged ``forget/loss`` should start here; a different first value means the reference is not the
    model before unlearning.
    """
    check_positive("beta", beta)
    return 2.0 / beta * math.log(2.0)
