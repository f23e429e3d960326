"""The pictures: valid, non-empty PNGs from a survival history and from logged evaluation curves."""

from __future__ import annotations

import csv

import pytest

from lit_unlearn.plots import HEATMAP_METRICS, precision_curves, short_layer_names, survival_heatmap

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LAYERS = [f"model.layers.{i}.{p}" for i in range(2) for p in ("self_attn.q_proj", "mlp.down_proj")]


def history(schemes=("nf4", "fp4"), steps=(10, 20, 30)):
    return [
        {"step": step, "scheme": scheme, "layer": layer, "changed": 0.1, "below_half_step": 0.8,
         "retained": 1.3 - 0.4 * i if step > 10 else float("nan"), "cosine": 0.2 * i, "rel_error": 0.5,
         "delta_norm": 1.0, "qdelta_norm": 0.9, "numel": 1024}
        for step in steps for scheme in schemes for i, layer in enumerate(LAYERS)
    ]


def assert_png(path):
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000
    height, width, _ = matplotlib.image.imread(path).shape
    assert height > 100 and width > 100


@pytest.mark.parametrize("metric", list(HEATMAP_METRICS))
def test_survival_heatmap_writes_a_png(tmp_path, metric):
    # Values outside [0, 1] (retained 1.3) and missing ones (NaN at step 10) are drawn, not rejected.
    path = survival_heatmap(history(), "nf4", tmp_path / "sub" / "heat.png", metric=metric)
    assert path == tmp_path / "sub" / "heat.png"
    assert_png(path)


def test_survival_heatmap_of_many_layers_and_steps(tmp_path):
    # A 7B Llama's 224 watched layers over 24 checks: no per-cell labels, every layer name still shown.
    layers = [f"model.layers.{i}.{p}" for i in range(32) for p in ("q", "k", "v", "o", "gate", "up", "down")]
    rows = [{"step": 10 * s, "scheme": "nf4", "layer": name, "retained": (s + j) % 7 / 6}
            for s in range(1, 25) for j, name in enumerate(layers)]
    assert_png(survival_heatmap(rows, "nf4", tmp_path / "big.png"))


def test_survival_heatmap_errors_name_the_choices(tmp_path):
    with pytest.raises(ValueError, match="'nf4', 'fp4'|'fp4', 'nf4'"):
        survival_heatmap(history(), "int4", tmp_path / "x.png")
    with pytest.raises(ValueError, match="it is empty"):
        survival_heatmap([], "nf4", tmp_path / "x.png")
    with pytest.raises(ValueError, match="'retained'"):
        survival_heatmap(history(), "nf4", tmp_path / "x.png", metric="delta_norm")
    assert not (tmp_path / "x.png").exists()


def test_short_layer_names_drop_the_shared_prefix():
    expected = ["0.self_attn.q_proj", "0.mlp.down_proj", "1.self_attn.q_proj", "1.mlp.down_proj"]
    assert short_layer_names(LAYERS) == expected
    assert short_layer_names(["a.b.q", "a.b.k"]) == ["q", "k"]
    assert short_layer_names(["model.layers.0.q"]) == ["model.layers.0.q"]


def curve_rows():
    rows = []
    for step in (5, 10, 15):
        for precision, offset in (("full", 0.0), ("int8", 0.5), ("nf4", 8.0)):
            rows.append({
                "step": step,
                f"eval/{precision}/verbmem": 40.0 - step + offset,
                f"eval/{precision}/knowmem": 30.0 - step / 2 + offset,
                f"eval/{precision}/utility": 50.0 - step / 5,
                f"eval/{precision}/privleak": float("nan"),
            })
    rows.append({"step": 15, "eval/retrain/full/verbmem": 20.0, "train/loss": 1.0})
    return rows


def test_precision_curves_from_rows(tmp_path):
    assert_png(precision_curves(curve_rows(), tmp_path / "curves.png"))


def test_precision_curves_from_a_csv_logger_file(tmp_path):
    # CSVLogger's layout: one column per key, empty cells where a row does not hold the key.
    rows = curve_rows()
    columns = ["step", "epoch", *sorted({k for r in rows for k in r} - {"step"})]
    with open(tmp_path / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows({**r, "epoch": 0} for r in rows)
    assert_png(precision_curves(tmp_path / "metrics.csv", tmp_path / "curves.png"))


def test_precision_curves_without_evaluations_says_how_to_log_them(tmp_path):
    with pytest.raises(ValueError, match="every_n_steps"):
        precision_curves([{"step": 1, "train/loss": 2.0}, {"eval/full/verbmem": 3.0}], tmp_path / "c.png")


def test_survival_curves_draw_the_verdict_of_several_runs(tmp_path):
    from lit_unlearn.plots import survival_curves

    preserved = [{"step": s - 1, "survival/nf4/effect_retained": 0.0, "survival/nf4/changed": 0.0} for s in (10, 20)]
    plain = [{"step": s - 1, "survival/nf4/effect_retained": 0.9, "survival/fp4/changed": 0.3} for s in (10, 20)]
    path = survival_curves({"preserved": preserved, "plain": plain}, tmp_path / "curves.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no survival/<scheme>/effect_retained"):
        survival_curves({"empty": [{"step": 1, "train/loss": 0.3}]}, tmp_path / "none.png")
