"""Build the SmolLM2 real-knowledge benchmark shipped as ``real:smollm2-data``.

    python scripts/build_real_benchmark.py                      # writes src/lit_unlearn/real/data/smollm2
    python scripts/build_real_benchmark.py --out /tmp/smollm2   # anywhere else

Asks SmolLM2-135M-Instruct (``real:smollm2``, float32, one torch thread, greedy, chat template) every
candidate question of :mod:`lit_unlearn.real.pool` and keeps those it answers correctly. Deterministic:
run it again on the same model file and versions and the files come out byte-identical except for the
timing and machine fields of ``probe.json``. About 8 minutes on one CPU thread.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main(argv: list[str] | None = None) -> None:
    import torch

    from lit_unlearn.real import DATA_DIR, build_benchmark, load_smollm2, smollm2_path

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(DATA_DIR), help="benchmark directory to write (default: %(default)s)")
    parser.add_argument("--model", default=None, help="GGUF file of the model (default: real:smollm2)")
    args = parser.parse_args(argv)

    # One thread: the verdicts are stored with the data, and a thread count changes float summation order.
    torch.set_num_threads(1)
    path = args.model or str(smollm2_path())
    start = time.perf_counter()
    model, tokenizer = load_smollm2(path)
    print(f"loaded {path} in {time.perf_counter() - start:.0f} s")
    benchmark = build_benchmark(model, tokenizer, args.out, model_file=path)
    probe = benchmark.probe
    print(f"probe: {probe['seconds']:.0f} s; correct/asked per split: "
          + ", ".join(f"{s} {probe['correct'][s]}/{probe['asked'][s]}" for s in probe["asked"]))
    print(f"kept per split: {probe['kept']} -> {args.out}")


if __name__ == "__main__":
    main()
