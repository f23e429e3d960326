"""scripts/reversion_map.py: its numbers on crafted runs, and its whole pipeline on the test-size world."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import load_script

SCRIPT = Path(__file__).parents[2] / "scripts" / "reversion_map.py"


@pytest.fixture(scope="module")
def rmap():
    return load_script(SCRIPT, "reversion_map")


def _run(rmap, unlearned: dict[str, float], target: float = 100.0, full: float = 40.0, signal: float = 1.0):
    metrics = {q: {"knowmem": unlearned.get(q, full), "verbmem": unlearned.get(q, full), "utility": 90.0}
               for q in rmap.PRECISIONS}
    targets = {q: {"knowmem": target, "verbmem": target, "utility": 100.0} for q in rmap.PRECISIONS}
    kept = {q: {m: rmap.kept_share(targets, metrics, q, m, 5.0) for m in rmap.FORGET_METRICS}
            for q in rmap.PRECISIONS if q != "full"}
    return {"metrics": metrics, "target": targets, "kept": kept,
            "survival": {s: {"effect_retained": signal} for s in rmap.SCHEMES}}


def test_kept_share_reads_one_when_forgetting_survives_and_zero_when_it_is_all_back(rmap):
    survived = _run(rmap, {})
    reverted = _run(rmap, {"nf4": 100.0, "int3": 70.0})  # nf4 remembers everything again, int3 half
    assert survived["kept"]["nf4"]["knowmem"] == 1.0
    assert reverted["kept"]["nf4"]["knowmem"] == 0.0 and reverted["kept"]["int3"]["knowmem"] == 0.5
    # A run that forgot (almost) nothing has no share to keep: undefined, not 1.
    assert _run(rmap, {}, full=97.0)["kept"]["nf4"]["knowmem"] is None


def test_durable_needs_every_precision_and_every_seed_within_epsilon(rmap):
    assert rmap.durable_at([_run(rmap, {}), _run(rmap, {"int4": 44.0})], 5.0, 5.0) is True
    assert rmap.durable_at([_run(rmap, {}), _run(rmap, {"int4": 46.0})], 5.0, 5.0) is False  # one seed, one scheme
    assert rmap.durable_at([_run(rmap, {}, full=97.0)], 5.0, 5.0) is None  # nothing forgotten
    assert rmap.durable_at([_run(rmap, {"int3": 30.0})], 5.0, 5.0) is True  # int3 is not a deployed precision...
    assert rmap.durable_at([_run(rmap, {"int3": 30.0})], 5.0, 5.0, (*rmap.DEPLOYED, "int3")) is False  # ...unless asked


def test_spearman(rmap):
    assert rmap.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rmap.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert rmap.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)  # ties: average ranks
    assert rmap.spearman([1, 2], [1, 2]) is None and rmap.spearman([1, 1, 1], [1, 2, 3]) is None


def test_the_signal_that_tracks_reversion_correlates(rmap):
    # The true positive for the predictive-power table: runs whose in-training verdict falls as their
    # deployed forgetting comes back give a positive correlation.
    cells = [rmap.Cell("npo_gdr", "lora", 1e-3, 60)]
    runs = {cells[0].name: [_run(rmap, {q: 40.0 + 15 * k for q in rmap.SCHEMES}, signal=1.0 - 0.25 * k)
                            for k in range(4)]}
    corr = rmap.correlations(cells, runs)
    assert corr["without_controls"]["nf4"]["rho"] == pytest.approx(1.0)


@pytest.mark.slow
def test_quick_pipeline_on_the_test_world(rmap, tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_UNLEARN_WORLD_SIZE", "test")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "reversion_map.md").write_text("# Kept\n\nWritten by hand.\n")
    result = rmap.main(["--quick", "--smoke", "--seeds", "0", "--out", str(tmp_path / "runs"), "--docs", str(docs)])
    assert len(result["cells"]) == len(rmap.grid(quick=True))
    saved = json.loads((docs / "reversion_map.json").read_text())
    assert {c["name"] for c in saved["cells"]} == {c.name for c in rmap.grid(quick=True)}
    for name in ("kept_share", "predicted", "pareto"):
        assert (docs / "images" / f"reversion_map_{name}.png").read_bytes()[:4] == b"\x89PNG"
    page = (docs / "reversion_map.md").read_text()
    assert page.startswith("# Kept\n\nWritten by hand.\n") and rmap.BEGIN in page and "| int3 |" in page
    # A rerun reuses every finished run and rewrites only the generated part.
    runs = sorted((tmp_path / "runs").rglob("results.json"))
    stamps = [p.stat().st_mtime_ns for p in runs]
    rmap.main(["--quick", "--smoke", "--seeds", "0", "--out", str(tmp_path / "runs"), "--docs", str(docs)])
    assert [p.stat().st_mtime_ns for p in runs] == stamps
    assert (docs / "reversion_map.md").read_text().count(rmap.BEGIN) == 1


@pytest.mark.slow
def test_width_study_pipeline(rmap, tmp_path):
    docs = tmp_path / "docs"
    result = rmap.main(["--widths", "test", "--smoke", "--seeds", "0", "--out", str(tmp_path / "runs"),
                        "--docs", str(docs)])
    (row, *_) = result["widths"]
    assert row["world"] == "test" and row["hidden_size"] == 64 and row["parameters"] > 0
    assert {r["name"] for r in result["widths"]} == {c.name for c in rmap.WIDTH_CELLS}
    assert (docs / "images" / "reversion_map_width.png").read_bytes()[:4] == b"\x89PNG"
    assert rmap.WIDTH_BEGIN in (docs / "reversion_map.md").read_text()


def test_unknown_width_is_refused(rmap, tmp_path, capsys):
    with pytest.raises(SystemExit):
        rmap.main(["--widths", "huge", "--out", str(tmp_path)])
    assert "world sizes are" in capsys.readouterr().err
