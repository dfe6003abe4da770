"""Imports run one way: every module of `posttrain/` imports only from its own layer and the layers before it
(CONTRIBUTING.md, "Layout"). Read with `ast`, so imports inside functions and under TYPE_CHECKING count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "posttrain"

# The order of CONTRIBUTING.md: a layer may import itself and any layer to its left, never one to its right.
LAYERS = ["errors", "io", "config", "data", "world", "models", "losses", "rollout", "recipes", "eval", "safety",
          "report", "pipeline", "sweep", "cli", "__main__"]


def layer_of(module: str) -> str:
    """`posttrain.data.render` -> `data`; the package's own `__init__` is below everything (`errors`)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "errors"


def module_name(path: Path, root: Path = PACKAGE) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, imported posttrain module) for every import statement in the file, at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path, root).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "posttrain"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from package (level 1), its parent (2), ...
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "posttrain":
                continue
            if target == "posttrain":  # `from posttrain import world`: the names are modules
                out += [(node.lineno, f"posttrain.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, target))
    return out


def violations(root: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        src = layer_of(module_name(path, root))
        for line, target in imports(path, root):
            dst = layer_of(target)
            if dst not in LAYERS:
                found.append(f"{path.relative_to(root.parent)}:{line}: imports {target}, whose layer '{dst}' is not "
                             "in the order (add it to CONTRIBUTING.md and LAYERS)")
            elif LAYERS.index(dst) > LAYERS.index(src):
                found.append(f"{path.relative_to(root.parent)}:{line}: {src} imports {target} ({dst} comes after {src})")
    return found


def test_every_layer_of_the_package_is_placed_in_the_order():
    layers = {layer_of(module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert layers <= set(LAYERS), layers - set(LAYERS)


def test_imports_run_one_way():
    assert violations() == []


def test_contributing_states_the_same_order():
    text = (PACKAGE.parent / "CONTRIBUTING.md").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("errors -> "))
    assert line.split(" -> ") == LAYERS[:-1], line


@pytest.mark.parametrize("source, bad", [
    ("def f():\n    from posttrain.models.load import load_model\n", True),   # inside a function
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import posttrain.recipes.sft\n", True),
    ("from ..models import load\n", True),                                    # relative, upstream
    ("from posttrain import pipeline\n", True),
    ("from posttrain.errors import UserError\nfrom . import render\n", False),
])
def test_the_check_finds_an_upstream_import(tmp_path, source, bad):
    """The walker sees imports in functions, under TYPE_CHECKING and relative ones (a data module shown)."""
    pkg = tmp_path / "posttrain" / "data"
    pkg.mkdir(parents=True)
    (tmp_path / "posttrain" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "probe.py").write_text(source)
    assert bool(violations(tmp_path / "posttrain")) is bad
