"""The W&B dashboard of an unlearning run: which panels to make, from which logged keys, and why.

A run with ``WandbLogger``, ``QuantizationSurvival`` and ``QuantizedEvaluation`` logs everything below on
the optimizer-step axis ``trainer/global_step`` (:func:`lit_unlearn.loggers.setup_wandb_metrics`). W&B
draws a default chart per key; the panels here group them so that one screen answers "did it forget,
and does the forgetting survive 4 bits?". Build them in the W&B workspace by adding a panel of the
given kind and pasting the key pattern (a regex) into its metric selector; or print the list with
``python -m lit_unlearn.dashboard``.

**Training** — ``train/loss``; ``train/forget/.*`` and ``train/retain/.*`` (the objective's terms: loss,
NLL, NPO's log-ratio); ``train/lr``.

**Does the update survive? (weights)** — per scheme, pooled over the watched layers:
``survival/<scheme>/retained`` (share of ``ΔW`` that ``Q(W0 + ΔW) − Q(W0)`` keeps) with its ``cosine``
and ``rel_error``, ``changed`` (share of weights whose code flips) and ``below_half_step`` (share of
the update a round trip can erase). The per-layer picture is the image ``survival/<scheme>/heatmap``
(layers × steps, the cosine of the quantized update with ``ΔW``: red = noise or rounded away), the
verdict over steps ``survival/curves`` (``effect_retained`` and ``changed`` per scheme), and the table
``survival/<scheme>/layers`` (every layer at the last check).

**Does the forgetting survive? (function)** — ``survival/<scheme>/effect_retained``: the share of the
change of the forget loss that the quantized model keeps (1 = all, 0 = the 4-bit model behaves like
the original; the callback warns below 0.5). ``survival/<scheme>/retain_shift``: what quantization
costs on retain data.

**MUSE at each precision** — one line chart per metric with every precision overlaid
(``eval/<precision>/verbmem``, ``knowmem``, ``privleak``, ``utility``), logged every N steps with
``QuantizedEvaluation(every_n_steps=N)`` and at the end; the final table ``eval/results`` (reference
rows such as ``retrain`` included) and the image ``eval/precision_curves``.

Example::

    from lit_unlearn.dashboard import DASHBOARD_PANELS, panels_markdown

    print(panels_markdown())
    [panel.keys for panel in DASHBOARD_PANELS if panel.kind == "image"]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["DASHBOARD_PANELS", "Panel", "main", "panels_markdown"]

PanelKind = Literal["line", "image", "table"]


@dataclass(frozen=True)
class Panel:
    """One dashboard panel.

    Args:
        section: Workspace section the panel belongs in.
        title: Panel title.
        kind: ``line`` (line plot over ``trainer/global_step``), ``image`` (media panel) or ``table``.
        keys: Logged keys, as regexes for W&B's metric selector (``<scheme>`` and ``<precision>`` are
            written as ``[^/]+``, so one panel overlays every scheme or precision).
        reads: What the panel tells you, in one sentence.
    """

    section: str
    title: str
    kind: PanelKind
    keys: tuple[str, ...]
    reads: str


DASHBOARD_PANELS: tuple[Panel, ...] = (
    Panel("Training", "Loss", "line", (r"^train/loss$",), "The objective being minimised."),
    Panel("Training", "Forget terms", "line", (r"^train/forget/.*",),
          "Forget NLL rising means the forget set is being unlearned; NPO's log-ratio shows how far from "
          "π_ref."),
    Panel("Training", "Retain terms", "line", (r"^train/retain/.*",),
          "Retain NLL should stay flat: a rise is utility being lost."),
    Panel("Training", "Learning rate", "line", (r"^train/lr$",), "The schedule actually applied."),
    Panel("Weights: does the update survive?", "Retained share of ΔW", "line",
          (r"^survival/[^/]+/retained$",),
          "1 = quantizing W0+ΔW keeps the whole update; near 0 = the scheme rounds it away."),
    Panel("Weights: does the update survive?", "Is what survives the update, or noise?", "line",
          (r"^survival/[^/]+/cosine$", r"^survival/[^/]+/rel_error$"),
          "Cosine of Q(W0+ΔW)−Q(W0) with ΔW and its relative error: low cosine with non-zero retained "
          "means what survives is rounding noise, not the update."),
    Panel("Weights: does the update survive?", "Codes changed / below half a step", "line",
          (r"^survival/[^/]+/changed$", r"^survival/[^/]+/below_half_step$"),
          "Few codes changed and most of ΔW below half a step is the signature of an update 4 bits erase."),
    Panel("Weights: does the update survive?", "Per-layer heatmap", "image", (r"^survival/[^/]+/heatmap$",),
          "Layers × steps, cosine of the quantized update with ΔW: red where a layer's update becomes "
          "rounding noise or is rounded away — which layers lose it, and when."),
    Panel("Weights: does the update survive?", "Per-layer table", "table", (r"^survival/[^/]+/layers$",),
          "Every layer's statistics at the last check, sortable: the worst layers at a glance."),
    Panel("Function: does the forgetting survive?", "Survival curves", "image", (r"^survival/curves$",),
          "effect_retained and the share of changed codes per scheme over the run, drawn at fit end."),
    Panel("Function: does the forgetting survive?", "Effect retained", "line",
          (r"^survival/[^/]+/effect_retained$",),
          "Share of the change of the forget loss the quantized model keeps; below 0.5 the callback warns."),
    Panel("Function: does the forgetting survive?", "Retain shift", "line",
          (r"^survival/[^/]+/retain_shift$",),
          "What quantization costs on retain data, in nats per token."),
    Panel("MUSE at each precision", "VerbMem on forget", "line", (r"^eval/[^/]+/verbmem$",),
          "Lower is better; a 4-bit line above the full-precision one is forgetting that did not survive."),
    Panel("MUSE at each precision", "KnowMem on forget", "line", (r"^eval/[^/]+/knowmem$",),
          "Lower is better; compare the 4-bit line with full precision."),
    Panel("MUSE at each precision", "PrivLeak", "line", (r"^eval/[^/]+/privleak$",),
          "Closer to 0 is better: the forget set looks as unseen as to a model never trained on it."),
    Panel("MUSE at each precision", "Utility (KnowMem on retain)", "line", (r"^eval/[^/]+/utility$",),
          "Higher is better: what unlearning and quantization cost on retained knowledge."),
    Panel("MUSE at each precision", "Results table", "table", (r"^eval/results$",),
          "The papers' table: every model and precision at the end of training, reference rows included."),
    Panel("MUSE at each precision", "Precision curves", "image", (r"^eval/precision_curves$",),
          "The same curves drawn once at fit end, saved next to the logs as precision_curves.png."),
)


def panels_markdown(panels: Sequence[Panel] = DASHBOARD_PANELS) -> str:
    """The panels as a Markdown list, grouped by section."""
    lines: list[str] = []
    section = None
    for panel in panels:
        if panel.section != section:
            section = panel.section
            lines += [*([""] if lines else []), f"## {section}", ""]
        keys = ", ".join(f"`{key}`" for key in panel.keys)
        lines.append(f"- **{panel.title}** ({panel.kind}): {keys}. {panel.reads}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m lit_unlearn.dashboard``: print the panels to build in a W&B workspace."""
    parser = argparse.ArgumentParser(
        prog="python -m lit_unlearn.dashboard",
        description="Print the W&B panels of an unlearning run and the logged keys behind each.",
    )
    parser.add_argument("--section", help="Print only the sections whose name contains this (any case).")
    args = parser.parse_args(argv)
    panels = DASHBOARD_PANELS
    if args.section:
        panels = tuple(p for p in panels if args.section.lower() in p.section.lower())
        if not panels:
            sections = ", ".join(dict.fromkeys(repr(p.section) for p in DASHBOARD_PANELS))
            parser.error(f"`--section` {args.section!r} matches no section; sections are {sections}.")
    print(panels_markdown(panels))


if __name__ == "__main__":
    main()
