"""scripts/reversion_map.py: its numbers on crafted runs, and its whole pipeline on the test-size world."""

from __future__ import annotations

import csv
import itertools
import json
import random
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


def test_durable_needs_every_precision_and_every_seed_to_keep_its_forgetting(rmap):
    assert rmap.durable_at([_run(rmap, {}), _run(rmap, {"int4": 44.0})], 5.0, 5.0) is True
    assert rmap.durable_at([_run(rmap, {}), _run(rmap, {"int4": 46.0})], 5.0, 5.0) is False  # one seed, one scheme
    assert rmap.durable_at([_run(rmap, {}, full=97.0)], 5.0, 5.0) is None  # nothing forgotten
    assert rmap.durable_at([_run(rmap, {"int3": 70.0})], 5.0, 5.0) is True  # int3 is not a deployed precision...
    assert rmap.durable_at([_run(rmap, {"int3": 70.0})], 5.0, 5.0, (*rmap.DEPLOYED, "int3")) is False  # ...unless asked


def test_one_sided_durability_fires_on_forgetting_given_back_and_not_on_forgetting_gained(rmap):
    # Full precision forgot 60 points (target 100, model 40). At nf4 the model remembers 6 points more
    # (54 forgotten): the forgetting is not kept to within 5 points, both tests fire.
    back = [_run(rmap, {"nf4": 46.0})]
    assert rmap.durable_at(back, 5.0, 5.0) is False
    assert rmap.durable_at(back, 5.0, 5.0, one_sided=False) is False
    # At nf4 it remembers 6 points *less* (66 forgotten): nothing came back, so the one-sided test stays
    # quiet, while the symmetric one calls this "not durable".
    more = [_run(rmap, {"nf4": 34.0}), _run(rmap, {"int4": 20.0})]
    assert rmap.durable_at(more, 5.0, 5.0) is True
    assert rmap.durable_at(more, 5.0, 5.0, one_sided=False) is False
    # Forgetting is measured against the target at the same precision: a target that loses 8 points at
    # int4 while the model stays put means 8 points fewer forgotten there.
    damaged = _run(rmap, {})
    damaged["target"]["int4"] = {"knowmem": 92.0, "verbmem": 92.0, "utility": 100.0}
    assert rmap.durable_at([damaged], 5.0, 5.0) is False


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


def _ranks(values):
    """Average ranks (1-based), counted directly: below + (equal + 1) / 2."""
    return [sum(w < v for w in values) + (sum(w == v for w in values) + 1) / 2 for v in values]


def _rho_oracle(xs, ys):
    """Spearman's rho as Pearson's correlation of average ranks, written independently of the script."""
    import numpy as np

    rx, ry = np.array(_ranks(xs)), np.array(_ranks(ys))
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def test_permutation_p_is_the_exact_share_of_pairings_at_least_as_correlated(rmap):
    xs = [0.1, 0.4, 0.2, 0.9, 0.5, 0.7]
    ys = [1.0, 2.0, 4.0, 3.0, 6.0, 5.0]
    # Without ties rho = 1 - 6 sum d^2 / (n (n^2 - 1)); ranks of xs 1 3 2 6 4 5, of ys 1 2 4 3 6 5:
    # d = 0 1 -2 3 -2 0, sum d^2 = 18, rho = 1 - 108 / 210 = 17/35.
    observed = 17 / 35
    assert rmap.spearman(xs, ys) == pytest.approx(observed)
    # Exact one-sided p: enumerate the 720 pairings; sum d^2 <= 18 <=> rho >= 17/35 (integers, no rounding).
    rank_x = _ranks(xs)
    hits = sum(sum((a - b) ** 2 for a, b in zip(rank_x, perm)) <= 18
               for perm in itertools.permutations(range(1, 7)))
    exact = hits / 720
    assert 0.05 < exact < 0.5  # a case where the p-value says something in between
    assert rmap.permutation_p(xs, ys) == pytest.approx(exact, abs=1e-12)
    # Past 8 points the script samples pairings; the oracle is a sample of its own (another RNG, the test's
    # rho), on the same 12 points (each of the 6 twice, so with ties): they agree to sampling error.
    sampled = rmap.permutation_p(xs * 2, ys * 2, draws=20000)
    hits = sum(r is not None and r >= _rho_oracle(xs * 2, ys * 2) - 1e-12
               for r in (_rho_oracle(xs * 2, perm) for perm in _shuffles(ys * 2, 4000)))
    assert sampled == pytest.approx(hits / 4000, abs=0.03)
    # The perfectly ordered case: only the identity pairing reaches rho = 1 among the 6! = 720.
    assert rmap.permutation_p([1, 2, 3, 4, 5, 6], [2, 4, 6, 8, 10, 12]) == pytest.approx(1 / 720)


def _shuffles(values, count):
    rng = random.Random(123)
    out = []
    for _ in range(count):
        v = list(values)
        rng.shuffle(v)
        out.append(v)
    return out


def test_bootstrap_over_cells_is_wider_than_over_runs_when_seeds_repeat_their_cell(rmap):
    # Four cells whose seeds sit (almost) on one point each; across cells the order is mixed. Resampling
    # runs keeps all four cells in nearly every draw, so rho stays near the full sample's; resampling cells
    # often draws two or three of them, and rho then swings from -1 to +1.
    centres = [(1.0, 1.0), (2.0, 3.0), (3.0, 2.0), (4.0, 4.0)]
    points, cells = [], []
    for c, (x, y) in enumerate(centres):
        for seed in range(5):
            points.append((x + 0.01 * seed, y + 0.01 * seed))
            cells.append(c)
    by_cell = rmap.bootstrap_interval(points, cells)
    by_run = rmap.bootstrap_interval(points, list(range(len(points))))
    assert by_cell[0] < 0.0 < 0.4 < by_run[0], (by_cell, by_run)
    # Oracle for the by-cell one: its 4^4 = 256 equally likely cell draws, enumerated. The rho of each
    # draw comes from the test's own formula; the script's 2.5% and 97.5% points must fall within the
    # exact distribution's 1.5%-3.5% and 96.5%-98.5% quantiles.
    exact = []
    for draw in itertools.product(range(4), repeat=4):
        sample = [p for c in draw for p, k in zip(points, cells) if k == c]
        rho = _rho_oracle([p[0] for p in sample], [p[1] for p in sample])
        if rho is not None:
            exact.append(rho)
    exact.sort()

    def quantile(q):
        return exact[round(q * (len(exact) - 1))]

    assert quantile(0.015) - 1e-9 <= by_cell[0] <= quantile(0.035) + 1e-9
    assert quantile(0.965) - 1e-9 <= by_cell[1] <= quantile(0.985) + 1e-9
    assert rmap.bootstrap_interval(points[:5], cells[:5]) is None  # one cell: no interval


def test_correlations_headline_leaves_the_constructed_controls_out(rmap):
    plain = rmap.Cell("npo_gdr", "lora", 1e-3, 60)
    control = rmap.Cell("npo_gdr", "full", 2e-3, 60, control="preserve")
    runs = {plain.name: [_run(rmap, {q: 40.0 + 3 * k for q in rmap.SCHEMES}, signal=1.0 + 0.01 * k) for k in range(3)],
            control.name: [_run(rmap, {"nf4": 100.0}, signal=0.0)]}
    corr = rmap.correlations([plain, control], runs)
    # The plain runs alone: signal up, kept share down; the control adds a (0, 0) point that flips the sign.
    assert corr["without_controls"]["nf4"]["rho"] == pytest.approx(-1.0)
    assert corr["without_controls"]["nf4"]["n"] == 3 and corr["without_controls"]["nf4"]["cells"] == 1
    assert corr["without_controls"]["nf4"]["p_one_sided"] == pytest.approx(1.0)  # every pairing has rho >= -1
    assert corr["without_controls"]["nf4"]["interval_by_cell"] is None  # one cell
    assert corr["with_controls"]["nf4"]["rho"] == pytest.approx(_rho_oracle([1.0, 1.01, 1.02, 0.0],
                                                                           [1.0, 0.95, 0.9, 0.0]))


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
    assert "| held-out probe, without the controls |" in page
    # The numbers, recomputed by hand from each run's own results.json and metrics.csv.
    points = []
    for cell in rmap.grid(quick=True):
        run_dir = tmp_path / "runs" / cell.name / "seed0" / "version_0"
        rows = json.loads((run_dir / "results.json").read_text())
        score = {(r["method"] != "target", r["precision"]): r for r in rows if r["method"] != "retrain"}
        (stored,) = saved["runs"][cell.name]
        for q in ("int8", "nf4", "fp4", "int4", "int3"):
            for m in ("knowmem", "verbmem"):
                forgot = score[False, "full"][m] - score[True, "full"][m]
                want = None if forgot < 5.0 else (score[False, q][m] - score[True, q][m]) / forgot
                assert stored["kept"][q][m] == (pytest.approx(want) if want is not None else None), (cell.name, q, m)
        last = {}
        for row in csv.DictReader((run_dir / "metrics.csv").open()):
            for scheme in rmap.SCHEMES:
                if row.get(f"survival/{scheme}/effect_retained"):
                    last[scheme] = float(row[f"survival/{scheme}/effect_retained"])
        assert last, cell.name
        for scheme, signal in last.items():
            assert stored["survival"][scheme]["effect_retained"] == pytest.approx(signal)
            # The held-out probe (single forget questions the run never trains on as such) is reported beside it.
            assert isinstance(stored["survival"][scheme]["effect_retained_heldout"], float)
            kept = stored["kept"][scheme]["knowmem"]
            if not cell.control and kept is not None:
                points.append((scheme, signal, kept))
    nf4 = [(x, y) for scheme, x, y in points if scheme == "nf4"]
    want_rho = _rho_oracle([x for x, _ in nf4], [y for _, y in nf4]) if len(nf4) >= 3 else None
    got = saved["spearman"]["without_controls"]["nf4"]
    assert got["n"] == len(nf4)
    assert got["rho"] == (pytest.approx(want_rho) if want_rho is not None else None)
    # Rebuilt from the stored JSON alone: the same tables and statistics, nothing fitted.
    rebuilt = rmap.main(["--from-json", str(docs / "reversion_map.json"), "--docs", str(tmp_path / "again")])
    assert rebuilt["spearman"] == saved["spearman"] and rebuilt["cells"] == saved["cells"]
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
