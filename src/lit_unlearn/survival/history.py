"""What a survival check leaves behind, as plain rows: the verdict over steps, the latest per-layer table,
the CSV file, the end-of-fit summary and the diagnosis of a low-survival warning.

``history`` holds one row per layer, scheme and check (keys :data:`~lit_unlearn.survival.HISTORY_KEYS`);
``functional_history`` one row per scheme and check (the probe losses and ``effect_retained``). Both are
plain Python, so a callback keeps them in its checkpoints and any script can read them back.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from typing import Any

from lit_unlearn.survival.engine import HISTORY_KEYS

__all__ = ["curve_rows", "latest_rows", "low_survival_message", "summary", "write_table"]

# In the low-survival warning: a layer whose update is mostly rounding noise or mostly rounded away.
_POOR = 0.5
_NAMED_LAYERS = 5


def curve_rows(history: Sequence[dict[str, Any]], functional_history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per check, as the loggers got it: ``step``, the verdict ``survival/<scheme>/effect_retained``
    and ``survival/<scheme>/changed`` pooled over the layers (weighted by their sizes)."""
    rows: dict[int, dict[str, Any]] = {}
    pooled: dict[tuple[int, str], list[float]] = {}
    for r in history:
        n_changed, numel = pooled.setdefault((r["step"], r["scheme"]), [0.0, 0.0])
        pooled[(r["step"], r["scheme"])] = [n_changed + r["changed"] * r["numel"], numel + r["numel"]]
    for (step, scheme), (n_changed, numel) in pooled.items():
        rows.setdefault(step, {"step": step})[f"survival/{scheme}/changed"] = n_changed / max(numel, 1)
    for r in functional_history:
        if r["effect_retained"] is not None:
            rows.setdefault(r["step"], {"step": r["step"]})[f"survival/{r['scheme']}/effect_retained"] = (
                r["effect_retained"]
            )
    return [rows[step] for step in sorted(rows)]


def latest_rows(history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of ``history`` from its latest check: one per watched layer and scheme."""
    i = len(history)
    while i > 0 and history[i - 1]["step"] == history[-1]["step"]:
        i -= 1
    return list(history[i:])


def write_table(path: str, rows: Sequence[dict[str, Any]], fresh: bool) -> None:
    """Write ``rows`` to the CSV table at ``path``: a new file with its header when ``fresh``, else appended."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w" if fresh else "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_KEYS)
        if fresh:
            writer.writeheader()
        writer.writerows(rows)


def summary(curves: Sequence[dict[str, Any]], schemes: Sequence[str], step: int, table: str | None,
            curves_name: str) -> str:
    """Two lines for the end of a fit: where the table and pictures are, and the last verdict per scheme."""
    directory = os.path.dirname(table or "") or "."
    last = curves[-1] if curves else {}
    verdicts = []
    for scheme in schemes:
        effect = last.get(f"survival/{scheme}/effect_retained")
        changed = last.get(f"survival/{scheme}/changed")
        parts = [f"effect_retained {effect:.2f}" if effect is not None else "effect_retained not measured"]
        if changed is not None:
            parts.append(f"{changed:.0%} of codes changed")
        verdicts.append(f"{scheme} {', '.join(parts)}")
    return (
        f"QuantizationSurvival: table {table}, pictures {curves_name} and survival_<scheme>.png "
        f"in {directory}.\nLast check (optimizer step {step}): " + "; ".join(verdicts) + "."
    )


def low_survival_message(scheme: str, step: int, effect: float, rows: Sequence[dict[str, Any]]) -> str:
    """The warning when the forgetting does not survive ``scheme``: the share kept and the layers whose
    update is mostly noise or erased (cosine or retained share below one half), or that none stands out."""
    poor = sorted(
        (r for r in rows if r["scheme"] == scheme and (r["cosine"] < _POOR or r["retained"] < _POOR)),
        key=lambda r: r["cosine"],
    )
    if poor:
        named = "; ".join(
            f"{r['layer']} (cosine {r['cosine']:.2f}, retained {r['retained']:.2f}, "
            f"{r['below_half_step']:.0%} below half a step)"
            for r in poor[:_NAMED_LAYERS]
        )
        more = f" and {len(poor) - _NAMED_LAYERS} more" if len(poor) > _NAMED_LAYERS else ""
        layers = f"Layers whose update is mostly noise or erased: {named}{more}."
    else:
        layers = (
            f"No single layer stands out (every layer keeps cosine and retained ≥ {_POOR}); the loss of "
            "effect comes from many small rounding errors."
        )
    return (
        f"QuantizationSurvival: only {effect:.0%} of the forgetting survives {scheme} at step {step}; "
        f"the quantized model behaves like the original on the forget probe. {layers}"
    )
