"""Nothing outside ``raflora/aggregation/`` knows a method by its name: what a method does is read
from its object (``raflora.aggregation.method.Method``), so adding a method touches no other package."""

from __future__ import annotations

import ast
from pathlib import Path

from raflora.aggregation import AGGREGATORS

PACKAGE = Path(__file__).resolve().parents[2] / "raflora"


def _names_compared(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, name) of every registry name that is compared against, tested for membership, or
    used as a branch/dict key in ``tree``."""
    found = []
    names = set(AGGREGATORS)

    def literal_names(node):
        for sub in ast.walk(node):
            if isinstance(sub, ast.Constant) and sub.value in names:
                yield sub

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for part in [node.left, *node.comparators]:
                found += [(c.lineno, c.value) for c in literal_names(part)]
        elif isinstance(node, (ast.If, ast.IfExp, ast.While)):
            found += [(c.lineno, c.value) for c in literal_names(node.test)]
        elif isinstance(node, ast.match_case):
            found += [(c.lineno, c.value) for c in literal_names(node.pattern)]
        elif isinstance(node, ast.Dict):
            found += [(c.lineno, c.value) for k in node.keys if k is not None for c in literal_names(k)]
    unique = {(line, name): None for line, name in found}  # an If's test holds its Compare too
    return list(unique)


def test_no_module_outside_aggregation_branches_on_a_method_name():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if (PACKAGE / "aggregation") in path.parents:
            continue
        for line, name in _names_compared(ast.parse(path.read_text(), str(path))):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {name!r}")
    assert offenders == []


def test_the_check_finds_a_comparison():
    tree = ast.parse('if fed.method == "ffa":\n    pass\nx = {"fedsa": 1}\ny = m in ("florist", "a")\n')
    assert [name for _, name in _names_compared(tree)] == ["ffa", "fedsa", "florist"]
