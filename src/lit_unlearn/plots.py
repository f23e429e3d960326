"""Pictures of a run: which layers' updates survive quantization, and the MUSE metrics per precision.

Both functions take plain Python (``QuantizationSurvival.history``, logged metric rows or a
``CSVLogger`` ``metrics.csv``) and write a PNG, so they work during a fit, after it, and on a run read
back from disk. matplotlib is imported on first use. The figures are drawn on matplotlib's ``Agg``
canvas through ``matplotlib.figure.Figure``, never through ``pyplot``: training processes often have no
display, and a notebook's own pyplot backend and open figures are left as they were.

Example::

    from lit_unlearn.plots import precision_curves, survival_heatmap

    survival_heatmap(survival.history, "nf4", "logs/survival_nf4.png")
    precision_curves("logs/version_0/metrics.csv", "logs/precision_curves.png")
"""

from __future__ import annotations

import csv
import math
import os
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "HEATMAP_METRICS",
    "PRECISION_STYLES",
    "precision_curves",
    "short_layer_names",
    "survival_curves",
    "survival_heatmap",
]

#: Per-layer statistics :func:`survival_heatmap` can draw: (colour-bar label, colormap). All are shares
#: in [0, 1]. ``retained`` and ``cosine`` are green where the update survives; ``below_half_step`` is
#: red where most of it is under half a quantization step; ``changed`` has no good or bad side.
HEATMAP_METRICS: dict[str, tuple[str, str]] = {
    "retained": ("share of the update that survives (retained)", "RdYlGn"),
    "cosine": ("cosine of Q(W1)−Q(W0) with ΔW: 1 = the quantized update is the update, 0 = rounding noise",
               "RdYlGn"),
    "below_half_step": ("share of the update below half a step", "RdYlGn_r"),
    "changed": ("share of weights whose code changes", "viridis"),
}

#: Line style of each precision in :func:`precision_curves`: full precision solid black, the 4-bit
#: formats in warm colours so that their gap to the black line is what the eye meets first.
PRECISION_STYLES: dict[str, dict[str, Any]] = {
    "full": {"color": "black", "linestyle": "-", "marker": "o"},
    "int8": {"color": "tab:blue", "linestyle": "--", "marker": "s"},
    "nf4": {"color": "tab:red", "linestyle": "-", "marker": "^"},
    "fp4": {"color": "tab:orange", "linestyle": "-.", "marker": "v"},
    "int4": {"color": "tab:purple", "linestyle": ":", "marker": "D"},
}
# The papers' column order, then anything else logged under eval/<precision>/.
_METRIC_ORDER = ("verbmem", "knowmem", "privleak", "utility", "auc")
_METRIC_TITLES = {
    "verbmem": "VerbMem on forget ↓",
    "knowmem": "KnowMem on forget ↓",
    "privleak": "PrivLeak → 0",
    "utility": "Utility (KnowMem on retain) ↑",
    "auc": "MIA AUC (forget vs holdout)",
}
_EVAL_KEY = re.compile(r"^eval/([^/]+)/([^/]+)$")
_REFERENCE_KEY = re.compile(r"^eval/([^/]+)/full/([^/]+)$")
# Cells are annotated with their value while the grid stays small enough to read the numbers.
_ANNOTATE_MAX_CELLS = 240


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    # A bare Figure renders with the Agg canvas when saved, whatever pyplot's backend is.
    return Figure(figsize=(width, height), layout="constrained")


def short_layer_names(names: Sequence[str]) -> list[str]:
    """Layer names without the dotted prefix they all share: ``model.layers.0.self_attn.q_proj`` →
    ``0.self_attn.q_proj`` when every name starts with ``model.layers.``. Stays unique; one name is kept
    whole."""
    if len(names) < 2:
        return list(names)
    parts = [name.split(".") for name in names]
    common = 0
    # Keep at least the last component of every name.
    while all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
        common += 1
    return [".".join(p[common:]) for p in parts]


def survival_heatmap(
    history: Iterable[Mapping[str, Any]],
    scheme: str,
    path: str | os.PathLike,
    metric: str = "cosine",
) -> Path:
    """Draw one quantization scheme's per-layer survival as a layers × steps heatmap and save it as PNG.

    Each cell is the value of ``metric`` for one watched layer at one check, clipped to [0, 1]. The
    default ``cosine`` separates signal from noise: a green row is a layer whose quantized update points
    where ``ΔW`` does, a red row one whose update the scheme rounds into noise or away, and the column where
    it turns red is when. ``retained`` (``⟨Q(W1) − Q(W0), ΔW⟩ / ‖ΔW‖²``) reads ≈ 1 over a population even
    when few codes change, so it explains rather than decides; the verdict is the functional
    ``effect_retained`` (:func:`survival_curves`). Layers keep the order they have in the
    model; layers missing at a check are grey.

    Args:
        history: Rows as in :attr:`lit_unlearn.callbacks.QuantizationSurvival.history`: plain dicts with at
            least ``step``, ``scheme``, ``layer`` and ``metric``. Rows of other schemes are ignored.
        scheme: The scheme to draw (``nf4``, ``fp4``, ...).
        path: PNG file to write; parent directories are created.
        metric: Per-layer statistic, one of :data:`HEATMAP_METRICS`.

    Returns:
        The path written.

    Raises:
        ValueError: If ``metric`` is unknown, or ``history`` holds no row of ``scheme`` (the message lists
            the schemes it holds).
    """
    if metric not in HEATMAP_METRICS:
        choices = ", ".join(map(repr, HEATMAP_METRICS))
        raise ValueError(f"`metric`={metric!r} cannot be drawn; choose from {choices}.")
    rows = list(history)
    mine = [r for r in rows if r.get("scheme") == scheme]
    if not mine:
        found = sorted({str(r.get("scheme")) for r in rows})
        held = f"it holds {', '.join(map(repr, found))}" if found else "it is empty"
        raise ValueError(
            f"`history` has no rows for `scheme`={scheme!r}: {held}. Pass one of its schemes, or a history "
            "from a QuantizationSurvival that checked at least once with `log_per_layer=True`."
        )
    layers = list(dict.fromkeys(r["layer"] for r in mine))
    steps = sorted({int(r["step"]) for r in mine})
    row_of = {name: i for i, name in enumerate(layers)}
    col_of = {step: j for j, step in enumerate(steps)}
    grid = [[math.nan] * len(steps) for _ in layers]
    for r in mine:
        value = r.get(metric)
        if value is not None and not math.isnan(float(value)):
            grid[row_of[r["layer"]]][col_of[int(r["step"])]] = min(1.0, max(0.0, float(value)))

    import matplotlib
    import numpy as np

    label, cmap_name = HEATMAP_METRICS[metric]
    raw = np.array(grid, dtype=float)
    values = np.ma.masked_invalid(raw)
    cmap = matplotlib.colormaps[cmap_name].with_extremes(bad="lightgrey")
    # About 0.16 in per layer row keeps 6-8 pt names legible; a 7B Llama's 224 layers make a tall but
    # readable picture rather than an unreadable square.
    height = min(60.0, max(3.0, 1.6 + 0.16 * len(layers)))
    width = min(18.0, max(6.0, 4.5 + 0.45 * len(steps)))
    fig = _figure(width, height)
    ax = fig.subplots()
    image = ax.imshow(values, aspect="auto", interpolation="nearest", cmap=cmap, vmin=0.0, vmax=1.0)
    fontsize = 8 if len(layers) <= 40 else 6
    ax.set_yticks(range(len(layers)), short_layer_names(layers), fontsize=fontsize)
    every = max(1, math.ceil(len(steps) / 16))
    ticks = list(range(0, len(steps), every))
    ax.set_xticks(ticks, [str(steps[j]) for j in ticks], fontsize=8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("layer")
    meaning = {"retained": f" (1 = the update survives {scheme}, 0 = rounded away)",
               "cosine": " (1 = what survives points along ΔW)"}.get(metric, "")
    ax.set_title(f"{scheme}: {metric} per layer{meaning}", fontsize=10)
    # Wrapped: a long caption on one line runs off the picture's edge beside a short heatmap.
    fig.colorbar(image, ax=ax, label=textwrap.fill(label, max(30, int(5 * height))),
                 fraction=0.04 if len(layers) > 20 else 0.08)
    if raw.size <= _ANNOTATE_MAX_CELLS:
        for (i, j), v in np.ndenumerate(raw):
            if not math.isnan(v):
                # Dark text on the light middle of the colormap, white on its dark ends.
                r, g, b, _ = cmap(v)
                light = 0.299 * r + 0.587 * g + 0.114 * b > 0.5
                colour = "black" if light else "white"
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color=colour)
    return _save(fig, path)


def _float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _read_rows(metrics: str | os.PathLike | Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    if isinstance(metrics, (str, os.PathLike)):
        with open(metrics, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    return list(metrics)


def precision_curves(
    metrics: str | os.PathLike | Iterable[Mapping[str, Any]],
    path: str | os.PathLike,
) -> Path:
    """Draw the MUSE metrics of the trained model over training steps, one line per precision, as PNG.

    One panel per metric (VerbMem, KnowMem, PrivLeak, utility, ...), each with the full-precision curve
    and the 8-bit and 4-bit ones, so that the gap between "forgotten at full precision" and "forgotten
    once deployed in 4 bits" is visible step by step. Reference models (``eval/<name>/full/<metric>``, as
    :meth:`lit_unlearn.evaluation.ResultsTable.scalars` logs them) are drawn as dotted horizontal lines.

    Args:
        metrics: A ``CSVLogger`` ``metrics.csv`` path, or rows (mappings) each holding a ``step`` and any
            of the ``eval/<precision>/<metric>`` values that ``QuantizedEvaluation(every_n_steps=...)``
            logs. Empty cells and NaN are skipped; a later value at the same step replaces an earlier one.
        path: PNG file to write; parent directories are created.

    Returns:
        The path written.

    Raises:
        ValueError: If no ``eval/<precision>/<metric>`` value with a step is found.
    """
    curves: dict[str, dict[str, dict[int, float]]] = {}
    references: dict[str, dict[str, float]] = {}
    for row in _read_rows(metrics):
        step = _float(row.get("step"))
        if step is None:
            continue
        for key, raw in row.items():
            value = _float(raw)
            if value is None or not isinstance(key, str):
                continue
            match = _EVAL_KEY.match(key)
            if match:
                precision, metric = match.groups()
                curves.setdefault(metric, {}).setdefault(precision, {})[int(step)] = value
                continue
            match = _REFERENCE_KEY.match(key)
            if match:
                name, metric = match.groups()
                references.setdefault(metric, {})[name] = value
    if not curves:
        raise ValueError(
            "`metrics` holds no `eval/<precision>/<metric>` values with a `step`. Log them with "
            "QuantizedEvaluation(every_n_steps=N) (or pass the rows or metrics.csv of such a run)."
        )
    order = [m for m in _METRIC_ORDER if m in curves] + sorted(m for m in curves if m not in _METRIC_ORDER)
    from matplotlib.ticker import MaxNLocator

    columns = min(2, len(order))
    nrows = math.ceil(len(order) / columns)
    fig = _figure(5.5 * columns, 3.4 * nrows)
    axes = fig.subplots(nrows, columns, squeeze=False)
    for ax, metric in zip(axes.flat, order):
        for precision in sorted(curves[metric], key=_precision_order):
            points = sorted(curves[metric][precision].items())
            style = PRECISION_STYLES.get(precision, {"linestyle": "-", "marker": "x"})
            ax.plot([s for s, _ in points], [v for _, v in points], label=precision, markersize=4, **style)
        for name, value in sorted(references.get(metric, {}).items()):
            ax.axhline(value, color="grey", linestyle=":", linewidth=1)
            ax.annotate(name, (1.0, value), xycoords=("axes fraction", "data"), ha="right", va="bottom",
                        fontsize=7, color="grey")
        ax.set_title(_METRIC_TITLES.get(metric, metric))
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(order):]:
        ax.set_visible(False)
    fig.suptitle("MUSE metrics of the trained model at each precision")
    return _save(fig, path)


_SURVIVAL_KEY = re.compile(r"^survival/([^/]+)/(effect_retained|changed)$")


def survival_curves(
    runs: Mapping[str, str | os.PathLike | Iterable[Mapping[str, Any]]],
    path: str | os.PathLike,
    title: str = "What quantization keeps of the unlearning, during training",
) -> Path:
    """Draw the survival check's verdict over training steps for one or more runs, as PNG.

    Left: ``survival/<scheme>/effect_retained`` — the share of the full-precision forgetting (forget-probe
    loss change) that the quantized model keeps; 1 = it all survives, 0 = the quantized model is the
    original. Right: ``survival/<scheme>/changed`` — the share of quantization codes the update changed.
    One colour per scheme, one line style per run.

    Args:
        runs: Run label → ``metrics.csv`` path or logged rows (each with a ``step``).
        path: PNG file to write.

    Raises:
        ValueError: if no run holds a ``survival/<scheme>/effect_retained`` or ``changed`` value.
    """
    curves: dict[str, dict[tuple[str, str], dict[int, float]]] = {"effect_retained": {}, "changed": {}}
    for label, metrics in runs.items():
        for row in _read_rows(metrics):
            step = _float(row.get("step"))
            if step is None:
                continue
            for key, raw in row.items():
                match = _SURVIVAL_KEY.match(key) if isinstance(key, str) else None
                value = _float(raw)
                if match and value is not None:
                    scheme, stat = match.groups()
                    curves[stat].setdefault((label, scheme), {})[int(step)] = value
    if not any(curves.values()):
        raise ValueError("`runs` hold no survival/<scheme>/effect_retained or changed values; log them with "
                         "QuantizationSurvival.")
    from matplotlib.ticker import MaxNLocator

    fig = _figure(11, 3.8)
    axes = fig.subplots(1, 2, squeeze=False)[0]
    labels = list(runs)
    styles = ["-", "--", ":", "-."]
    titles = {"effect_retained": "effect_retained: share of the forgetting the quantized model keeps",
              "changed": "changed: share of quantization codes the update flipped"}
    for ax, stat in zip(axes, ("effect_retained", "changed")):
        for (label, scheme), points in sorted(curves[stat].items(), key=lambda kv: (labels.index(kv[0][0]), kv[0][1])):
            colour = PRECISION_STYLES.get(scheme, {}).get("color")
            xs, ys = zip(*sorted(points.items()))
            ax.plot(xs, ys, linestyle=styles[labels.index(label) % len(styles)], marker="o", markersize=3,
                    color=colour, label=f"{label}: {scheme}")
        if stat == "effect_retained":
            ax.axhline(1.0, color="grey", linewidth=0.8)
            ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_title(titles[stat], fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def _precision_order(precision: str) -> tuple[int, str]:
    known = list(PRECISION_STYLES)
    return (known.index(precision) if precision in known else len(known), precision)


def _save(fig: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, format="png")
    return path
