"""The ``Example::`` blocks in the quantization docstrings run as written."""

import doctest
import importlib

import pytest

MODULES = ["__init__", "schemes", "functional", "survival", "model"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module("lit_unlearn.quantization" + ("" if name == "__init__" else f".{name}"))
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
