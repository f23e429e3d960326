"""The documented dashboard panels cover the keys lit-unlearn logs, and print as Markdown."""

from __future__ import annotations

import re

import pytest

from lit_unlearn.callbacks.quantization_survival import _LOGGED_STATS
from lit_unlearn.callbacks.quantized_evaluation import CURVES_IMAGE_KEY
from lit_unlearn.dashboard import DASHBOARD_PANELS, main, panels_markdown
from lit_unlearn.evaluation.results import COLUMNS, RESULTS_TABLE_KEY, scalar_name

SCHEMES = ("nf4", "fp4", "int4", "int8")
PRECISIONS = ("full", "int8", "nf4", "fp4", "int4")


def panel_for(key: str, kind: str):
    return [p for p in DASHBOARD_PANELS if p.kind == kind and any(re.search(k, key) for k in p.keys)]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_survival_key_has_a_panel(scheme):
    for stat in (*_LOGGED_STATS, "effect_retained", "retain_shift"):
        assert panel_for(f"survival/{scheme}/{stat}", "line"), stat
    assert panel_for(f"survival/{scheme}/heatmap", "image")
    assert panel_for(f"survival/{scheme}/layers", "table")


def test_every_evaluation_key_has_a_panel_and_references_stay_out_of_the_curves():
    for precision in PRECISIONS:
        for key, _ in COLUMNS:
            assert len(panel_for(f"eval/{precision}/{scalar_name(key)}", "line")) == 1
    assert not panel_for("eval/retrain/full/verbmem", "line")
    assert panel_for(RESULTS_TABLE_KEY, "table") and panel_for(CURVES_IMAGE_KEY, "image")
    assert panel_for("train/loss", "line") and panel_for("train/forget/nll", "line")


def test_panels_print_as_markdown(capsys):
    text = panels_markdown()
    assert text.startswith("## Training") and text.count("## ") == len({p.section for p in DASHBOARD_PANELS})
    main(["--section", "muse"])
    out = capsys.readouterr().out
    assert "## MUSE at each precision" in out and "## Training" not in out
    with pytest.raises(SystemExit):
        main(["--section", "nope"])
    assert "matches no section" in capsys.readouterr().err
