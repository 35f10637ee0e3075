"""The layers of docs/design (lora -> aggregation -> tasks/client -> federation -> runtimes -> cli) read
from the tree: no module imports one of a higher layer, at module level or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "raflora"

LAYERS = [
    ("lora", "wire"),
    ("aggregation",),
    ("config", "option_models", "ranks", "partition", "simulate", "tasks", "hf_auto"),
    ("client", "config_io", "config_doc", "peft_io"),
    ("federation",),
    ("runtimes", "compare", "sweep", "tuning", "report", "api"),
    ("cli", "cli_output", "__main__", "__init__"),
]
LAYER = {name: k for k, names in enumerate(LAYERS) for name in names}


def top(module: str) -> str:
    """``raflora.federation.round`` -> ``federation``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("raflora"):
            found.append((node.lineno, node.module if node.module != "raflora" else "raflora.__init__"))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("raflora.")]
    return found


def test_no_module_imports_upward():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        mine = top(".".join(rel.parts))
        assert mine in LAYER, f"{rel}: give its package a layer in tests/test_layers.py"
        for line, module in imported(ast.parse(path.read_text(), str(path))):
            if top(module) in LAYER and LAYER[top(module)] > LAYER[mine]:
                upward.append(f"{rel}:{line} imports {module}")
    assert upward == []
