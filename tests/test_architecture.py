"""The layers of ARCHITECTURE.md, kept by the suite: one direction of imports, small modules, no hidden imports."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ppl_lvm"
MAX_LINES = 400
# imports written inside functions: only optional or slow third-party libraries, never the package's own modules
LAZY_OK = ("matplotlib", "arviz", "arviz_base", "arviz_stats", "arviz_plots", "scipy", "pandas", "sklearn", "tqdm", "xarray", "h5netcdf")


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_layers_contract_holds():
    importlinter = pytest.importorskip("importlinter")
    from importlinter.application import use_cases
    from importlinter.configuration import configure

    del importlinter
    configure()
    kept = use_cases.lint_imports(config_filename=str(ROOT / "pyproject.toml"), cache_dir=None, no_logo=True)
    assert kept, "an import runs against the layers: run `lint-imports` for the chain (ARCHITECTURE.md says where code goes)"


@pytest.mark.parametrize("path", _modules() + sorted((ROOT / "models").glob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_over_the_line_limit(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines; split it by job (ARCHITECTURE.md)"


def _function_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom):
                    found.append((sub.lineno, "." * sub.level + (sub.module or "")))
                elif isinstance(sub, ast.Import):
                    found.extend((sub.lineno, alias.name) for alias in sub.names)
    return found


def _says_why(path: Path, lineno: int) -> bool:
    """A late import carries a comment on its line or within the three lines above it."""
    lines = path.read_text().splitlines()
    return any("#" in line for line in lines[max(0, lineno - 4):lineno])


def test_no_import_of_the_package_inside_a_function():
    offenders = []
    for path in _modules():
        for lineno, name in _function_imports(ast.parse(path.read_text())):
            if name.startswith(".") or name.split(".")[0] == "ppl_lvm":
                offenders.append(f"{path.relative_to(ROOT)}:{lineno}: {name}")
            elif name.split(".")[0] not in LAZY_OK:
                offenders.append(f"{path.relative_to(ROOT)}:{lineno}: {name} (not an optional heavy dependency)")
            elif not _says_why(path, lineno):
                offenders.append(f"{path.relative_to(ROOT)}:{lineno}: {name} (no comment saying why it is late)")
    assert not offenders, "imports inside functions:\n" + "\n".join(offenders)


def test_nothing_in_the_package_imports_the_package_itself():
    grimp = pytest.importorskip("grimp")  # installed with import-linter
    graph = grimp.build_graph("ppl_lvm")
    offenders = sorted(m for m in graph.modules if m != "ppl_lvm" and "ppl_lvm" in graph.find_modules_directly_imported_by(m))
    assert not offenders, f"these import ppl_lvm/__init__ (import the defining module instead): {offenders}"


def test_the_repository_folders_are_not_part_of_the_package():
    for name in ("tests", "bench", "tutorials"):
        assert importlib.util.find_spec(f"ppl_lvm.{name}") is None, f"ppl_lvm.{name} must not be importable"
    assert importlib.util.find_spec("ppl_lvm.models") is not None
