"""Keep third-party noise out of users' logs."""

from __future__ import annotations

import logging


class _DropKernelsCommunity(logging.Filter):
    # bitsandbytes' CPU backend tries to fetch an optional gemm kernel from a model hub at import time
    # and logs a warning when it cannot; lit-unlearn never uses that kernel, so the line is only noise.
    def filter(self, record: logging.LogRecord) -> bool:
        return "kernels-community" not in record.getMessage()


def silence_bitsandbytes() -> None:
    """Install the filter on bitsandbytes' CPU backend logger (idempotent; call before importing it)."""
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if not any(isinstance(f, _DropKernelsCommunity) for f in logger.filters):
        logger.addFilter(_DropKernelsCommunity())
