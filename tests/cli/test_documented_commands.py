"""Every ``lit-unlearn …`` command in README.md and docs/ parses as written, so documentation cannot drift.

Commands are taken from fenced shell blocks and from inline code. ``fit``/``test``/``validate`` run as
``--print_config`` (the whole config is parsed and instantiated as classes, nothing is trained), ``export``
through its own argument parser, ``prepare`` as ``--help``.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def documented_commands() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        blocks = re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, flags=re.S)
        lines = []
        for block in blocks:
            lines += block.replace("\\\n", " ").splitlines()
        lines += re.findall(r"`(lit-unlearn [^`]+)`", text)
        for line in lines:
            for part in re.split(r"&&|;", line):
                part = part.split("  #")[0].strip()
                words = shlex.split(part, comments=True) if part else []
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    words = words[1:]  # environment assignments
                if words[:1] == ["lit-unlearn"] and len(words) > 1:
                    found.append((doc.name, shlex.join(words)))
    return sorted(set(found))


COMMANDS = documented_commands()


def test_the_docs_hold_commands():
    subcommands = {shlex.split(cmd)[1] for _, cmd in COMMANDS}
    assert {"fit", "test", "export", "prepare"} <= subcommands, subcommands


@pytest.mark.parametrize(("doc", "command"), COMMANDS)
def test_documented_command_parses(doc, command, tmp_path, monkeypatch, capsys):
    from lit_unlearn.cli import main
    from lit_unlearn.export import _parser

    words = shlex.split(command)[1:]
    # Config paths are relative to the repository root, outputs land in a scratch directory.
    words = [str(ROOT / w) if w.endswith(".yaml") and (ROOT / w).is_file() else w for w in words]
    monkeypatch.chdir(tmp_path)
    subcommand = words[0]
    if subcommand == "export":
        args = _parser().parse_args(words[1:])
        assert args.adapter_or_model and args.output_dir
        return
    if subcommand == "prepare":
        words = [*words[:1], "--help"]
    else:
        words = [w for w in words if w != "--help"] + ["--print_config"]
    with pytest.raises(SystemExit) as exit_:
        main(words)
    assert exit_.value.code in (0, None), f"{doc}: `{command}` does not parse:\n{capsys.readouterr().err}"
