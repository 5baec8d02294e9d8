"""The package's shape holds: one-way import layers (import-linter contracts in pyproject.toml),
torch.distributed in one file, short files and functions, and lazy imports that say so."""
from __future__ import annotations

import ast


from helpers import REPO

PACKAGE = REPO / "lmlab"
# A file a reader can hold in mind, and a function whose code fits one screen with its signature.
# Classes have no cap: a cap on a cohesive class (the Trainer owns a run) splits it into a helper
# module that calls back into it, which is worse than the long class. A function's docstring is
# not counted: documentation is never what a cap should push out.
MAX_FILE_LINES, MAX_FUNCTION_LINES = 450, 50


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, path.read_text(encoding="utf-8")


def _touches_torch_distributed(node: ast.AST) -> bool:
    """``import torch.distributed...``, ``from torch.distributed... import``, ``from torch import
    distributed`` or the expression ``torch.distributed``."""
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[:2] == ["torch", "distributed"] for a in node.names)
    if isinstance(node, ast.ImportFrom) and node.module:
        return node.module.split(".")[:2] == ["torch", "distributed"] or (
            node.module == "torch" and any(a.name == "distributed" for a in node.names))
    return isinstance(node, ast.Attribute) and node.attr == "distributed" and \
        isinstance(node.value, ast.Name) and node.value.id == "torch"


def test_only_training_distributed_touches_torch_distributed():
    allowed = PACKAGE / "training" / "distributed.py"
    offenders = [f"{path.relative_to(REPO)}:{node.lineno}" for path, source in _modules()
                 if path != allowed for node in ast.walk(ast.parse(source))
                 if _touches_torch_distributed(node)]
    assert offenders == []
    assert any(_touches_torch_distributed(n) for n in ast.walk(ast.parse(allowed.read_text())))


def _code_lines(func: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """A function's lines from ``def`` to its end, less its docstring."""
    lines = func.end_lineno - func.lineno + 1
    first = func.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and \
            isinstance(first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def test_files_and_functions_stay_short():
    """Replaces the class-length cap (160 lines) of earlier versions: see MAX_FUNCTION_LINES."""
    long_files, long_functions = [], []
    for path, source in _modules():
        lines = source.count("\n")
        if lines > MAX_FILE_LINES:
            long_files.append(f"{path.relative_to(REPO)}: {lines} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    _code_lines(node) > MAX_FUNCTION_LINES:
                long_functions.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: "
                                      f"{_code_lines(node)} lines")
    assert long_files == [] and long_functions == []


def test_function_local_imports_are_lazy_on_purpose():
    """A function-level import hides a dependency from readers (and from import-linter's picture):
    only a lazy start-up justifies one, and its comment says so ("# lazy: ...")."""
    unexplained = []
    for path, source in _modules():
        lines = source.splitlines()
        for func in ast.walk(ast.parse(source)):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and "# lazy:" not in lines[node.lineno - 1]:
                    unexplained.append(f"{path.relative_to(REPO)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert unexplained == []
