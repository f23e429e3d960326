"""Unlearn from Python instead of the ``lit-unlearn`` CLI: the same module, data and callbacks.

    python examples/unlearn_from_python.py                          # the toy world (built on first use)
    python examples/unlearn_from_python.py --model path/to/llama --forget forget.txt \\
        --retain retain.jsonl --eval-data none --max-steps 100
    python examples/unlearn_from_python.py --wandb                  # log to W&B (WANDB_MODE=offline works)

What ``lit-unlearn fit -c configs/npo_gdr.yaml`` does, written out: ``UnlearningModule`` (LoRA by
default) and ``ForgetRetainDataModule`` on your paths, ``QuantizationSurvival`` watching whether the
update survives nf4/fp4 rounding, and ``QuantizedEvaluation`` scoring the MUSE metrics at full
precision, 8-bit and 4-bit at the end (and every ``--eval-every`` steps). Forget and retain sets are
``.txt`` files (documents separated by blank lines), ``.jsonl`` files with a ``text`` field, or
directories of ``.txt`` files. Evaluation needs a dataset in MUSE's layout (``world:data``,
``muse-bench/MUSE-News`` or a local copy); ``--eval-data none`` skips it.

Outputs under ``--out``: the adapter as safetensors (``adapter/``), ``metrics.csv`` (or the W&B run),
``quantization_survival.csv`` (per-layer survival at every check), the MUSE table
``results.md``/``.csv``/``.json`` (plus ``precision_curves.png`` with ``--eval-every``). With ``--wandb``
the adapter is also logged as a W&B artifact.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger, Logger

from lit_unlearn import ForgetRetainDataModule, LoRA, UnlearningModule
from lit_unlearn.callbacks import QuantizationSurvival, QuantizedEvaluation
from lit_unlearn.objectives import METHODS

SCHEMES = ("nf4", "fp4")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="world:target", help="Local model directory or hub id.")
    parser.add_argument("--forget", help="Forget set path; default: the toy world's forget split.")
    parser.add_argument("--retain", help="Retain set path, or 'none'; default: the toy world's retain split.")
    parser.add_argument("--objective", default="npo_gdr", choices=METHODS)
    parser.add_argument("--lora-rank", type=int, default=16, help="LoRA rank; 0 unlearns every weight.")
    parser.add_argument("--lr", type=float, default=None, help="Default: 1e-4 with LoRA, 1e-5 without.")
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128, help="Tokens per training example.")
    parser.add_argument("--survival-every", type=int, default=10, help="Steps between survival checks.")
    parser.add_argument("--eval-data", default="world:data", help="MUSE-layout dataset, or 'none'.")
    parser.add_argument("--eval-every", type=int, default=None, help="Also evaluate every N steps.")
    parser.add_argument("--eval-items", type=int, default=None, help="Items per evaluated set; default all.")
    parser.add_argument("--eval-new-tokens", type=int, default=None,
                        help="Greedy tokens per VerbMem prompt and KnowMem question for a quick look; "
                             "default: MUSE's 128 and 32, the only values comparable with the papers.")
    parser.add_argument("--retrain", default=None,
                        help="Retrain model for PrivLeak's reference AUC (default: world:retrain for "
                             "world:data).")
    parser.add_argument("--log-every", type=int, default=5, help="Steps between logged training metrics.")
    parser.add_argument("--wandb", action="store_true", help="Log to W&B (project lit-unlearn).")
    parser.add_argument("--out", default="outputs/from_python")
    return parser.parse_args(argv)


def build_logger(args: argparse.Namespace) -> Logger:
    if args.wandb:
        from lightning.pytorch.loggers import WandbLogger

        return WandbLogger(project="lit-unlearn", save_dir=args.out)
    return CSVLogger(args.out, name="", version="")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    seed_everything(0)

    optimizer = None if args.lr is None else partial(torch.optim.AdamW, lr=args.lr, weight_decay=0.0)
    module = UnlearningModule(
        args.model,
        objective=args.objective,
        lora=LoRA(r=args.lora_rank, alpha=2.0 * args.lora_rank) if args.lora_rank > 0 else None,
        output_dir=str(Path(args.out) / ("adapter" if args.lora_rank > 0 else "model")),
        optimizer=optimizer,
        log_artifact=True,  # the saved adapter as a versioned W&B artifact (ignored by other loggers)
    )
    data: dict[str, Any] = {}
    if args.forget is not None:
        data["forget"] = args.forget
    if args.retain is not None:
        data["retain"] = None if args.retain.lower() == "none" else args.retain
    datamodule = ForgetRetainDataModule(batch_size=args.batch_size, max_length=args.max_length, **data)

    survival = QuantizationSurvival(every_n_steps=args.survival_every, schemes=SCHEMES)
    callbacks: list[Any] = [survival]
    evaluation = None
    if args.eval_data.lower() != "none":
        retrain = args.retrain or ("world:retrain" if args.eval_data == "world:data" else None)
        evaluation = QuantizedEvaluation(
            data=args.eval_data,
            precisions=("full", "int8", *SCHEMES),
            references={"retrain": retrain} if retrain else None,
            every_n_steps=args.eval_every,
            max_items=args.eval_items,
            output_dir=args.out,
            **({} if args.eval_new_tokens is None else {
                "verbmem_max_new_tokens": args.eval_new_tokens,
                "knowmem_max_new_tokens": args.eval_new_tokens,
            }),
        )
        callbacks.append(evaluation)

    trainer = Trainer(
        max_steps=args.max_steps, logger=build_logger(args), callbacks=callbacks, default_root_dir=args.out,
        enable_checkpointing=False, log_every_n_steps=args.log_every,
    )
    trainer.fit(module, datamodule)

    saved = module.resolve_output_dir()
    # The pooled values of the last check, as logged.
    for scheme in SCHEMES:
        stats = {key.rsplit("/", 1)[1]: float(value) for key, value in trainer.callback_metrics.items()
                 if key.startswith(f"survival/{scheme}/")}
        print(f"{scheme}: " + ", ".join(f"{name} {value:.2f}" for name, value in sorted(stats.items())))
    return {
        "trainer": trainer, "module": module, "survival": survival, "evaluation": evaluation, "saved": saved,
    }


if __name__ == "__main__":
    main()
