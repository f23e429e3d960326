"""Sweep unlearning settings on the toy world and print MUSE numbers, as `docs/tuning.md` records them.

    python scripts/tune_toy_world.py                       # every run below (about 40 minutes on 2 cores)
    python scripts/tune_toy_world.py lora_npo_gdr_traj     # one run, by name

Each run is `lit-unlearn fit -c <config> <overrides>` in its own directory under `--out`, with the
config's evaluation lightened for speed: full precision and nf4 at the end (no target/retrain rows, so no
PrivLeak), or, for a trajectory, full precision every `every` steps. The final table or the trajectory
is printed per run.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

def opts(steps: int, lr: float, *more: str) -> list[str]:
    """Command-line overrides, always naming steps and lr so that runs do not depend on config defaults."""
    return ["--trainer.max_steps", str(steps), "--model.optimizer.init_args.lr", str(lr), *more]


LORA, FULL = "configs/{}.yaml", "configs/full/{}.yaml"
# name: (config, overrides, evaluate every N steps for a trajectory, or None for one final evaluation)
RUNS: dict[str, tuple[str, list[str], int | None]] = {
    # LoRA (r 16, alpha 32, AdamW, constant lr).
    "lora_npo_gdr_steps150": (LORA.format("npo_gdr"), opts(150, 1e-3), None),
    "lora_npo_gdr_lr2e-3": (LORA.format("npo_gdr"), opts(60, 2e-3), None),
    "lora_npo_gdr_lr3e-3": (LORA.format("npo_gdr"), opts(60, 3e-3), None),
    "lora_npo_gdr_lr3e-3_rw1": (LORA.format("npo_gdr"), opts(60, 3e-3, "--model.objective.retain_weight", "1.0"), None),
    "lora_npo_klr_lr2e-3": (LORA.format("npo_klr"), opts(60, 2e-3), None),
    "lora_ga_gdr": (LORA.format("ga_gdr"), opts(60, 1e-3), None),
    "lora_simnpo_gdr": (LORA.format("simnpo_gdr"), opts(60, 1e-3), None),
    "lora_npo_gdr_traj": (LORA.format("npo_gdr"), opts(90, 1e-3), 10),
    "lora_npo_gdr_lr2e-3_traj": (LORA.format("npo_gdr"), opts(120, 2e-3), 15),
    "lora_simnpo_gdr_lr2e-3_traj": (LORA.format("simnpo_gdr"), opts(120, 2e-3), 15),
    "lora_simnpo_gdr_traj": (LORA.format("simnpo_gdr"), opts(90, 1e-3), 10),
    "lora_npo_gdr_beta0.05_traj": (LORA.format("npo_gdr"), opts(90, 1e-3, "--model.objective.npo_beta", "0.05"), 10),
    # Full-parameter (AdamW, constant lr).
    "full_npo_gdr_lr1e-5_steps60": (FULL.format("npo_gdr"), opts(60, 1e-5), None),
    "full_npo_gdr_lr1e-5": (FULL.format("npo_gdr"), opts(300, 1e-5), None),
    "full_npo_gdr_lr1e-5_beta1": (FULL.format("npo_gdr"), opts(300, 1e-5, "--model.objective.npo_beta", "1.0"), None),
    "full_ga_gdr_lr1e-5": (FULL.format("ga_gdr"), opts(300, 1e-5), None),
    "full_npo_gdr_lr1e-4": (FULL.format("npo_gdr"), opts(300, 1e-4), None),
    "full_npo_gdr_lr3e-4": (FULL.format("npo_gdr"), opts(300, 3e-4), None),
    "full_ga_gdr_lr1e-4_traj": (FULL.format("ga_gdr"), opts(480, 1e-4), 60),
    "full_npo_gdr_lr1e-3_traj": (FULL.format("npo_gdr"), opts(120, 1e-3), 20),
    "full_npo_gdr_lr5e-4_traj": (FULL.format("npo_gdr"), opts(200, 5e-4), 25),
    "full_npo_gdr_lr3e-4_beta0.02_traj": (FULL.format("npo_gdr"), opts(120, 3e-4, "--model.objective.npo_beta", "0.02"), 20),
    "full_ga_gdr_lr5e-4_traj": (FULL.format("ga_gdr"), opts(150, 5e-4), 25),
    "full_simnpo_gdr_lr5e-4_traj": (FULL.format("simnpo_gdr"), opts(150, 5e-4), 25),
}


def light_config(config: str, every: int | None, path: Path) -> None:
    """The shipped config with a cheaper evaluation: no reference rows, fewer precisions."""
    data = yaml.safe_load((ROOT / config).read_text())
    for callback in data["trainer"]["callbacks"]:
        if callback["class_path"].endswith("QuantizedEvaluation"):
            args = callback["init_args"]
            args.pop("references", None)
            if every is None:
                args["precisions"] = ["full", "nf4"]
            else:
                args.update(precisions=["full"], every_n_steps=every,
                            tasks=["verbmem_forget", "knowmem_forget", "knowmem_retain"])
    path.write_text(yaml.safe_dump(data))


def run(name: str, out: Path) -> None:
    config, overrides, every = RUNS[name]
    directory = out / name
    directory.mkdir(parents=True, exist_ok=True)
    light_config(config, every, directory / "config.yaml")
    start = time.time()
    with open(directory / "log.txt", "w") as log:
        subprocess.run(
            [sys.executable, "-c", "from lit_unlearn.cli import main; main()", "fit", "-c", "config.yaml",
             *overrides],
            cwd=directory, stdout=log, stderr=subprocess.STDOUT, check=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"},
        )
    print(f"== {name}: {config} {' '.join(overrides)} ({time.time() - start:.0f} s)")
    if every is None:
        table = next(directory.rglob("results.md")).read_text().splitlines()
        print("\n".join(line for line in table if line.startswith("|")))
        return
    # Results are logged at the optimizer updates applied (after k updates: step k), periodic and final.
    seen = set()
    with open(next(directory.rglob("metrics.csv"))) as f:
        for row in csv.DictReader(f):
            if not row.get("eval/full/knowmem"):
                continue
            updates = int(row["step"])
            if updates in seen:
                continue
            seen.add(updates)
            values = (float(row[f"eval/full/{k}"]) for k in ("verbmem", "knowmem", "utility"))
            line = "after {:>4} steps: VerbMem {:6.2f}  KnowMem {:6.2f}  utility {:6.2f}"
            print(line.format(updates, *values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"runs to do (default: all): {', '.join(RUNS)}")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "tuning")
    args = parser.parse_args()
    unknown = [name for name in args.names if name not in RUNS]
    if unknown:
        parser.error(f"unknown run(s) {', '.join(unknown)}; choose from {', '.join(RUNS)}")
    for name in args.names or RUNS:
        run(name, args.out)


if __name__ == "__main__":
    main()
