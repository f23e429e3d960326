"""The ``lit-unlearn`` command.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI subcommands over ``UnlearningModule``
and ``ForgetRetainDataModule``; ``prepare`` builds the embedded toy world and ``export`` merges an
adapter into its base for deployment.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from lit_unlearn._paths import run_directory
from lit_unlearn.callbacks.progress_log import ProgressLog
from lit_unlearn.callbacks.save_on_interrupt import SaveOnInterrupt
from lit_unlearn.data import ForgetRetainDataModule
from lit_unlearn.module import UnlearningModule

__all__ = ["UnlearnCLI", "main"]

_DESCRIPTION = """\
lit-unlearn: LLM unlearning that survives 4-bit quantization.

  lit-unlearn fit -c configs/simnpo_gdr.yaml  unlearn (LoRA or full-parameter)
  lit-unlearn test -c configs/simnpo_gdr.yaml --ckpt_path last
                                              evaluate at full, 8-bit and 4-bit precision
  lit-unlearn prepare [--size default]        build the embedded toy world now
  lit-unlearn export --help                   merge an adapter, save the model for deployment
"""


class _SaveConfig(SaveConfigCallback):
    """Writes ``config.yaml`` into the run's own directory (``run_directory``): with a W&B logger
    ``trainer.log_dir`` is the shared ``save_dir``, where the next run would overwrite it."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        directory = run_directory(trainer)  # every rank: it broadcasts
        if trainer.is_global_zero:
            directory.mkdir(parents=True, exist_ok=True)
            self.parser.save(self.config, str(directory / self.config_filename), skip_none=False,
                             overwrite=self.overwrite, multifile=self.multifile)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)


class UnlearnCLI(LightningCLI):
    """LightningCLI for ``UnlearningModule`` + ``ForgetRetainDataModule``.

    Re-running into the same directory overwrites the saved ``config.yaml`` instead of failing.
    """

    def __init__(self, args: Sequence[str] | None = None, **kwargs) -> None:
        kwargs.setdefault("save_config_callback", _SaveConfig)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        # The description's lines are a table of commands: keep them as written.
        parser_kwargs = {"description": _DESCRIPTION, "formatter_class": argparse.RawDescriptionHelpFormatter}
        kwargs.setdefault("parser_kwargs", parser_kwargs)
        self._args = list(args) if args is not None else None
        super().__init__(UnlearningModule, ForgetRetainDataModule, args=args, **kwargs)

    def _resolve_last_checkpoint(self) -> None:
        """``--ckpt_path last`` → the newest ``last*.ckpt`` this config's runs wrote, as a path.

        Each run keeps its checkpoints in its own versioned directory (``<run root>/version_N/
        checkpoints``), where a new ``test`` run would look in a version of its own; so "last" is resolved
        here, across the runs. Lightning only warns when it finds nothing and goes on with the untrained
        model, which would write a results table under the method's name: that is refused.
        """
        subcommand = self.config.get("subcommand")
        if subcommand is None or self.config[subcommand].get("ckpt_path") != "last":
            return
        callbacks = self.trainer.checkpoint_callbacks
        dirs = [Path(cb.dirpath) for cb in callbacks if getattr(cb, "dirpath", None)]
        if any(getattr(cb, "dirpath", None) is None for cb in callbacks):
            # Lightning puts such a callback's checkpoints under the run directory when it sets up.
            roots = {Path(self.trainer.default_root_dir)}
            roots.update(Path(lg.save_dir) for lg in self.trainer.loggers if getattr(lg, "save_dir", None))
            dirs += sorted(roots)
        found = [p for d in dirs for p in (d.rglob("last*.ckpt") if d.is_dir() else []) if p.is_file()]
        if not found:
            where = ", ".join(map(str, dirs)) or "(no ModelCheckpoint in this config)"
            raise FileNotFoundError(
                f"`--ckpt_path last`: no last.ckpt in {where}. Run `lit-unlearn fit` with this config first "
                "(its ModelCheckpoint saves last.ckpt), or pass the checkpoint's path to --ckpt_path."
            )
        newest = max(found, key=lambda p: p.stat().st_mtime_ns)
        # The subcommand's arguments are taken from `config_init`; `config` is what gets saved.
        for config in (self.config, self.config_init):
            config[subcommand]["ckpt_path"] = str(newest)
        print(f"lit-unlearn: --ckpt_path last is {newest}", file=sys.stderr)

    def before_fit(self) -> None:
        self._resolve_last_checkpoint()  # resuming: `--ckpt_path last` is the newest run's last.ckpt
        # Without a terminal a progress bar shows nothing until the end: print plain lines instead.
        if not sys.stderr.isatty() and not any(isinstance(c, ProgressLog) for c in self.trainer.callbacks):
            self.trainer.callbacks.append(ProgressLog())
        if not any(isinstance(c, SaveOnInterrupt) for c in self.trainer.callbacks):
            self.trainer.callbacks.append(SaveOnInterrupt(f"lit-unlearn fit {shlex.join(self._argv_for_resume())}"))

    def _argv_for_resume(self) -> list[str]:
        argv = [a for a in (self._args or sys.argv[1:]) if a != "fit"]
        drop = {i for i, a in enumerate(argv) if a.startswith("--ckpt_path")}
        drop |= {i + 1 for i in drop if argv[i] == "--ckpt_path"}
        return [a for i, a in enumerate(argv) if i not in drop] + ["--ckpt_path", "last"]

    def before_test(self) -> None:
        self._resolve_last_checkpoint()

    def before_validate(self) -> None:
        self._resolve_last_checkpoint()

    def before_predict(self) -> None:
        self._resolve_last_checkpoint()


SUBCOMMANDS = ("fit", "validate", "test", "predict", "prepare", "export")
#: Errors a user's input causes (a bad value, path or name); printed as one message, not a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError,
               MisconfigurationException, FloatingPointError)
_DEBUG_ENV = "LIT_UNLEARN_DEBUG"


def _usage_error(message: str) -> None:
    print(f"usage: lit-unlearn {{{','.join(SUBCOMMANDS)}}} ...\n"
          "tip: lit-unlearn --help lists what each does\n"
          f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the ``lit-unlearn`` console script.

    An error caused by the input (a bad value, a missing file, an unknown name) is printed as one message
    and exits with status 1; set ``LIT_UNLEARN_DEBUG=1`` to see the traceback instead.
    """
    argv = list(sys.argv[1:] if args is None else args)
    first = next((a for a in argv if not a.startswith("-")), None)
    if not argv:
        _usage_error(f"give a subcommand: one of {', '.join(SUBCOMMANDS)}.")
    if first is not None and first not in SUBCOMMANDS and argv[0] == first:
        _usage_error(f"unknown subcommand {first!r}; choose one of {', '.join(SUBCOMMANDS)}.")
    try:
        _dispatch(argv, args is None)
    except SIGTERMException:
        raise SystemExit(128 + signal.SIGTERM) from None  # what was saved, and how to resume, is printed
    except USER_ERRORS as err:
        if os.environ.get(_DEBUG_ENV, "") not in ("", "0"):
            raise
        print(f"lit-unlearn: error: {_one_message(str(err))}\n(set {_DEBUG_ENV}=1 to see the traceback)",
              file=sys.stderr)
        raise SystemExit(1) from None


def _one_message(message: str) -> str:
    """The user's own error out of jsonargparse's report on a union-typed value (e.g. a callback list),
    which lists every subtype it tried: the first reason that is not "not this type"."""
    if "Does not validate against any of the Union subtypes" not in message:
        return message
    generic = ("Not a valid subclass", "Expected a ", "Given value", "Subclass types", "- a ")
    for line in message.splitlines():
        reason = line.strip().removeprefix("- ").strip()
        if line.startswith("  - ") and not reason.startswith(generic):
            return reason
    return message


def _dispatch(argv: list[str], from_sys_argv: bool) -> None:
    if argv[:1] == ["prepare"]:
        from lit_unlearn.world.__main__ import main as prepare

        prepare(argv[1:])
        return
    if argv[:1] == ["export"]:
        from lit_unlearn.export import main as export

        export(argv[1:])
        return
    # `args=None` lets LightningCLI read sys.argv itself (it warns when given both).
    UnlearnCLI(args=None if from_sys_argv else argv)


if __name__ == "__main__":
    main()
