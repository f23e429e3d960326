"""Retain terms: what keeps the model useful while it forgets.

Each term is a small stateless callable ``term(logits, labels, ref_logits=None) -> LossOutput`` on the
retain batch, in the Hugging Face causal-LM convention (see :mod:`lit_unlearn.objectives.logprobs`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_unlearn.objectives.interface import LossOutput, check_choice, require_reference
from lit_unlearn.objectives.logprobs import (
    IGNORE_INDEX,
    check_logits_labels,
    scored_positions,
    token_logprobs,
)

KLR_FORMS: tuple[str, ...] = ("probs", "logits")


def token_kl(logits: Tensor, ref_logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Mean over scored tokens of ``KL(p_ref ‖ p_θ)`` between next-token distributions, a float32 scalar.

    Position ``t`` is scored when ``labels[:, t + 1]`` is (the positions that :func:`token_logprobs`
    scores). ``ref_logits`` should be detached. A batch with no scored token gives 0.
    """
    check_logits_labels(logits, labels)
    mask = labels[:, 1:] != ignore_index
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    with torch.no_grad():
        ref_logp = torch.log_softmax(ref_logits[:, :-1].float(), dim=-1)
        ref_p = ref_logp.exp()
        # KL = Σ_v p_ref·log p_ref − Σ_v p_ref·log p_θ. Contracting over the vocabulary with einsum
        # avoids the extra (B, T, V) tensor that an elementwise `kl_div(..., reduction="none")` writes.
        # Both sums go through the same kernel, so identical logits give exactly 0.
        neg_entropy = torch.einsum("btv,btv->bt", ref_p, ref_logp)
    cross = torch.einsum("btv,btv->bt", ref_p, logp)
    per_token = torch.where(mask, neg_entropy - cross, 0.0)
    return per_token.sum() / mask.sum().clamp_min(1)


class GDR:
    """Gradient descent on the retain set: ``L = NLL(x_r)``, the mean token cross-entropy.

    Reference: the ``GDR`` regulariser of MUSE (Shi et al., "MUSE: Machine Unlearning Six-Way Evaluation
    for Language Models", arXiv:2407.06460), the "gradient difference" of TOFU (Maini et al.,
    arXiv:2401.06121) and Liu et al., "Continual Learning and Private Unlearning", CoLLAs 2022.

    Metrics: ``nll`` (mean token NLL of the retain batch).

    Example::

        >>> import torch
        >>> logits, labels = torch.zeros(1, 3, 4), torch.tensor([[0, 1, 2]])
        >>> round(GDR()(logits, labels).loss.item(), 4)  # ln 4
        1.3863
    """

    needs_reference: bool = False

    def __call__(self, logits: Tensor, labels: Tensor, ref_logits: Tensor | None = None) -> LossOutput:
        logp, mask = token_logprobs(logits, labels)
        nll = -logp.sum() / mask.sum().clamp_min(1)
        return LossOutput(loss=nll, metrics={"nll": nll.detach()})

    def __repr__(self) -> str:
        return "GDR()"


class KLR:
    """KL regularisation on the retain set: ``L = mean_t KL(p_ref(·|x_{<=t}) ‖ p_θ(·|x_{<=t}))``.

    The KL is taken per next-token distribution at every scored retain position and averaged over those
    positions; it is 0 while the model equals the reference.

    Reference: the ``KLR`` regulariser of MUSE (Shi et al., arXiv:2407.06460) and the KL baseline of
    TOFU (Maini et al., arXiv:2401.06121).

    Args:
        form: ``"probs"`` is the formula above. ``"logits"`` reproduces MUSE's released baseline code
            (``muse_bench``, ``baselines/iterative.py``): ``F.kl_div(z_θ, z_ref, reduction="batchmean",
            log_target=True)`` applied to the *raw logits* ``z`` as if they were log-probabilities, i.e.
            ``Σ exp(z_ref) · (z_ref − z_θ) / B`` summed over every position and vocabulary entry. It is
            not a divergence between distributions (its value scales with ``exp`` of the logits and is
            not bounded below) but it is what produced MUSE's published KLR numbers; use it only to
            compare against them. Positions whose own label is ``-100`` are left out; with MUSE's
            collation (``labels == input_ids``, no padding) that is exactly the code's sum.

    Metrics: ``kl`` (the per-token ``KL(p_ref ‖ p_θ)`` above, whichever ``form``), ``nll`` (mean token
    NLL of the retain batch).

    Raises:
        ValueError: if ``form`` is not one of ``KLR_FORMS``; at call time, if ``ref_logits`` is missing or
            shaped unlike ``logits``.

    Example::

        >>> import torch
        >>> logits, labels = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
        >>> KLR()(logits, labels, ref_logits=logits.clone()).loss.item()
        0.0
    """

    needs_reference: bool = True

    def __init__(self, form: Literal["probs", "logits"] = "probs") -> None:
        check_choice("form", form, KLR_FORMS)
        self.form = form

    def __call__(self, logits: Tensor, labels: Tensor, ref_logits: Tensor | None = None) -> LossOutput:
        ref_logits = require_reference("KLR", ref_logits, logits)
        if self.form == "probs":
            loss = token_kl(logits, ref_logits, labels)
            kl = loss.detach()
        else:
            positions = scored_positions(labels, IGNORE_INDEX)
            elementwise = F.kl_div(logits.float(), ref_logits.float(), reduction="none", log_target=True)
            # "batchmean" divides the total by the batch size only, not by the number of tokens.
            loss = torch.where(positions.unsqueeze(-1), elementwise, 0.0).sum() / logits.shape[0]
            with torch.no_grad():
                kl = token_kl(logits, ref_logits, labels)
        with torch.no_grad():
            logp, mask = token_logprobs(logits, labels)
            nll = -logp.sum() / mask.sum().clamp_min(1)
        return LossOutput(loss=loss, metrics={"kl": kl, "nll": nll})

    def __repr__(self) -> str:
        return f"KLR(form={self.form!r})"
