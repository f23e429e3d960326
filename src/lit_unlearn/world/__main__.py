"""``python -m lit_unlearn.world`` (and ``lit-unlearn prepare``): prepare the toy world, print where it is.

Example::

    python -m lit_unlearn.world --size default --seed 0
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lit_unlearn.world.config import SIZES
from lit_unlearn.world.prepare import cache_root, prepare_world


def _table(recall: dict) -> str:
    rows = ["model    precision  forget QA  retain QA  forget verbatim  retain verbatim"]
    for model, by_scheme in recall.items():
        for scheme, r in by_scheme.items():
            rows.append(
                f"{model:<8} {scheme:<9} {r['forget']['qa_exact']:>9.2f}  {r['retain']['qa_exact']:>9.2f}  "
                f"{r['forget']['verbatim_token_acc']:>15.2f}  {r['retain']['verbatim_token_acc']:>15.2f}"
            )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="lit-unlearn prepare",
        description="Build (or verify the cached) embedded toy world: MUSE-layout data, tokenizer, "
        "target and retrain models.",
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="default", help="named world size")
    parser.add_argument("--seed", type=int, default=0, help="seed of the world (default 0)")
    parser.add_argument("--cache-dir", default=None, help=f"cache directory (default {cache_root()})")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed {args.seed} must be a non-negative integer.")
    world = prepare_world(size=args.size, seed=args.seed, cache_dir=args.cache_dir, progress=not args.quiet)
    print(f"world     {world.root}")
    for name in ("data", "tokenizer", "target", "retrain"):
        print(f"{name:<9} {getattr(world, name)}")
    print(
        f"prepared in {world.manifest['timings']['total_s']:.0f} s; recall (exact-match QA, verbatim token accuracy):"
    )
    print(_table(world.manifest["recall"]))


if __name__ == "__main__":
    main()
