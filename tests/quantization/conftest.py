"""Fixtures for the quantization tests: bitsandbytes on CPU, without its noise or its compile step."""

from __future__ import annotations

import pytest

from lit_unlearn._logging import silence_bitsandbytes


@pytest.fixture
def bnb():
    """``bitsandbytes.functional``. bitsandbytes is a hard dependency: a broken install fails these tests
    rather than skipping them. Its pure-torch fallback (odd last dimension) is wrapped in
    ``torch.compile``; eager mode computes the same values and saves seconds of compilation per shape."""
    silence_bitsandbytes()
    import bitsandbytes.functional as functional
    import torch._dynamo

    with torch._dynamo.config.patch(disable=True):
        yield functional
