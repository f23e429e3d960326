"""The ``lit-unlearn`` command.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI subcommands over ``UnlearningModule``
and ``ForgetRetainDataModule``; ``prepare`` builds the embedded toy world and ``export`` merges an
adapter into its base for deployment.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lightning.pytorch.cli import LightningCLI

from lit_unlearn.data import ForgetRetainDataModule
from lit_unlearn.module import UnlearningModule

__all__ = ["UnlearnCLI", "main"]

_DESCRIPTION = """\
lit-unlearn: LLM unlearning that survives 4-bit quantization.

  lit-unlearn fit -c configs/npo_gdr.yaml     unlearn (LoRA or full-parameter)
  lit-unlearn test -c configs/npo_gdr.yaml --ckpt_path last
                                              evaluate at full, 8-bit and 4-bit precision
  lit-unlearn prepare [--size default]        build the embedded toy world now
  lit-unlearn export --help                   merge an adapter, save the model for deployment
"""


class UnlearnCLI(LightningCLI):
    """LightningCLI for ``UnlearningModule`` + ``ForgetRetainDataModule``.

    Re-running into the same directory overwrites the saved ``config.yaml`` instead of failing.
    """

    def __init__(self, args: Sequence[str] | None = None, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"description": _DESCRIPTION})
        super().__init__(UnlearningModule, ForgetRetainDataModule, args=args, **kwargs)


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the ``lit-unlearn`` console script."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv[:1] == ["prepare"]:
        from lit_unlearn.world.__main__ import main as prepare

        prepare(argv[1:])
        return
    if argv[:1] == ["export"]:
        from lit_unlearn.export import main as export

        export(argv[1:])
        return
    # `args=None` lets LightningCLI read sys.argv itself (it warns when given both).
    UnlearnCLI(args=None if args is None else argv)


if __name__ == "__main__":
    main()
