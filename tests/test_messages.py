"""What users read: messages in plain words, without the team's spec section numbers."""

from __future__ import annotations

import ast
from pathlib import Path

import nydus_compact

ROOT = Path(nydus_compact.__file__).resolve().parent.parent
PACKAGES = ("applier", "backends", "cli", "mkimage", "planner", "rafs", "reports", "safeio", "store")


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """String literals that can reach a user: every constant but docstrings (comments are not in the tree)."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_no_spec_section_numbers_in_messages():
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, text in _strings(ast.parse(path.read_text(), str(path))):
                if "§" in text or ".md §" in text:
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: {text!r}")
    assert not offenders, "\n".join(offenders)
