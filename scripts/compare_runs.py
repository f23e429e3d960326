"""Run shipped configs over several seeds and tabulate the trained model's MUSE rows as mean ± spread.

    python scripts/compare_runs.py --out runs/qat \
        --run plain=configs/npo_gdr.yaml \
        --run "aware=configs/npo_gdr.yaml --model.quantization_aware nf4" \
        --seeds 0 1 2

Each ``--run NAME=CONFIG [overrides…]`` is fitted once per seed with ``lit-unlearn fit`` in its own
directory (``<out>/<name>/seed<k>``; the config's own output paths are redirected there), skipped when its
``results.json`` already exists, so a rerun resumes. The table (``<out>/summary.md`` and ``.json``) gives,
per run and precision, the mean and the min–max spread over seeds of VerbMem, KnowMem (forget) and
utility, next to the target's and retrain's rows, and the last in-training survival verdict per scheme.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

METRICS = ("verbmem", "knowmem", "utility")


def _redirected(config: Path, run_dir: Path) -> Path:
    text = config.read_text()
    root = next(line.split(":", 1)[1].strip() for line in text.splitlines() if "default_root_dir:" in line)
    out = run_dir / "config.in.yaml"
    out.write_text(text.replace(root, str(run_dir)))
    return out


def fit(name: str, spec: str, seed: int, out: Path) -> Path:
    config, *overrides = shlex.split(spec)
    run_dir = (out / name / f"seed{seed}").resolve()
    results = run_dir / "version_0" / "results.json"
    if results.is_file():
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    args = ["lit-unlearn", "fit", "-c", str(_redirected(Path(config), run_dir)), "--seed_everything", str(seed),
            "--trainer.enable_progress_bar", "false", *overrides]
    start = time.time()
    with open(run_dir / "fit.log", "w") as log:
        subprocess.run(args, check=True, stdout=log, stderr=subprocess.STDOUT)
    (run_dir / "seconds.txt").write_text(f"{time.time() - start:.0f}\n")
    return run_dir


def _rows(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "version_0" / "results.json").read_text())


def _survival(run_dir: Path) -> dict[str, float]:
    """The last logged value of every survival/<scheme>/effect_retained in the run's metrics.csv."""
    last: dict[str, float] = {}
    path = run_dir / "version_0" / "metrics.csv"
    if not path.is_file():
        return last
    for row in csv.DictReader(path.open()):
        for key, value in row.items():
            if key.startswith("survival/") and key.endswith("/effect_retained") and value:
                last[key.split("/")[1]] = float(value)
    return last


def summarize(runs: dict[str, list[Path]]) -> tuple[str, dict]:
    summary: dict = {}
    lines = ["| run | precision | " + " | ".join(f"{m} (mean, min–max)" for m in METRICS) + " |",
             "|---|---|" + "---|" * len(METRICS)]
    first = next(iter(runs.values()))[0]
    for reference in ("target", "retrain"):
        for row in (r for r in _rows(first) if r["method"] == reference):
            lines.append(f"| {reference} | {row['precision']} | " + " | ".join(f"{row[m]:.1f}" for m in METRICS) + " |")
    for name, dirs in runs.items():
        trained = [[r for r in _rows(d) if r["method"] not in ("target", "retrain")] for d in dirs]
        precisions = [r["precision"] for r in trained[0]]
        summary[name] = {}
        for precision in precisions:
            values = {m: [next(r[m] for r in rows if r["precision"] == precision) for rows in trained] for m in METRICS}
            summary[name][precision] = {m: {"mean": statistics.fmean(v), "min": min(v), "max": max(v), "values": v}
                                        for m, v in values.items()}
            cells = [f"{statistics.fmean(v):.1f} ({min(v):.1f}–{max(v):.1f})" for v in values.values()]
            lines.append(f"| {name} | {precision} | " + " | ".join(cells) + " |")
        verdicts = [_survival(d) for d in dirs]
        summary[name]["effect_retained"] = verdicts
        seconds = [float((d / "seconds.txt").read_text()) for d in dirs if (d / "seconds.txt").is_file()]
        summary[name]["seconds"] = seconds
    lines.append("")
    for name in runs:
        verdicts = summary[name]["effect_retained"]
        schemes = sorted({s for v in verdicts for s in v})
        shown = ", ".join(
            f"{s} {min(v[s] for v in verdicts if s in v):.2f}–{max(v[s] for v in verdicts if s in v):.2f}"
            for s in schemes)
        lines.append(f"- {name}: last in-training effect_retained {shown or 'not logged'}; "
                     f"fit time {', '.join(f'{s:.0f}' for s in summary[name]['seconds'])} s.")
    return "\n".join(lines) + "\n", summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--run", action="append", required=True, help="NAME=CONFIG [overrides]")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    runs: dict[str, list[Path]] = {}
    for item in args.run:
        name, _, spec = item.partition("=")
        if not spec:
            parser.error(f"--run {item!r}: give NAME=CONFIG [overrides]")
        runs[name] = [fit(name, spec, seed, args.out) for seed in args.seeds]
        print(f"{name}: {len(runs[name])} seeds done", file=sys.stderr)
    markdown, summary = summarize(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.md").write_text(markdown)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
