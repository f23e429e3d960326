"""Only ``lit_unlearn.deployment`` edits a :class:`DeployedLayer`: everyone else calls its methods
(``cache_references``, ``hold_original``, ``measured_against``), so how a layer is deployed lives in one place."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from lit_unlearn.deployment.layers import DeployedLayer

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "lit_unlearn"
FIELDS = frozenset(f.name for f in dataclasses.fields(DeployedLayer))


def field_assignments(source: str) -> list[str]:
    """Assignments to a DeployedLayer field name on anything but ``self`` (``layer.snapshot = w0``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        else:
            continue
        flat = [e for t in targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
        for target in flat:
            if (isinstance(target, ast.Attribute) and target.attr in FIELDS
                    and not (isinstance(target.value, ast.Name) and target.value.id == "self")):
                found.append(f"{node.lineno}: {ast.unparse(target)}")
    return found


def test_the_detector_finds_a_field_set_from_outside():
    snippet = "layer.source, layer.snapshot = 'snapshot', w0\nlayer.quantized += 1\nself.snapshot = None\nd[layer.name] = 1\n"
    assert field_assignments(snippet) == ["1: layer.source", "1: layer.snapshot", "2: layer.quantized"]


def test_nothing_outside_deployment_sets_a_deployed_layers_fields():
    outside = [p for p in PACKAGE.rglob("*.py") if "deployment" not in p.relative_to(PACKAGE).parts]
    assert len(outside) > 50
    found = {str(p.relative_to(PACKAGE)): hits for p in outside if (hits := field_assignments(p.read_text()))}
    assert not found, f"DeployedLayer fields set outside lit_unlearn.deployment: {found}"
