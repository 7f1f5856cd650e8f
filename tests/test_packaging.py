"""Packaging promises: every sub-package is installed, and no Qt below the GUI layer."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject() -> None:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        pytest.skip("tomllib needs Python 3.11")
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())
    listed = set(cfg["tool"]["setuptools"]["packages"])
    found = set()
    for init in (REPO / "app").rglob("__init__.py"):
        rel = init.parent.relative_to(REPO / "app")
        found.add(".".join(("tomoguide", *rel.parts)) if rel.parts else "tomoguide")
    assert found - listed == set(), f"add these to [tool.setuptools] packages: {sorted(found - listed)}"


GUI_MODULES = ("PySide6", "pyqtgraph", "vispy", "superqt", "shiboken6", "OpenGL")
NON_GUI = ["compute", "steps", "project.py", "geometry.py", "runner.py", "cli.py", "synth.py", "demo.py", "truth.py",
           "inspect.py"]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_qt_below_the_gui_layer() -> None:
    files: list[Path] = []
    for entry in NON_GUI:
        p = REPO / "app" / entry
        files.extend(p.rglob("*.py") if p.is_dir() else [p] if p.exists() else [])
    assert files
    offenders = {str(f.relative_to(REPO)): sorted(_imports(f) & set(GUI_MODULES)) for f in files}
    offenders = {k: v for k, v in offenders.items() if v}
    assert offenders == {}, f"GUI imports outside app/pages and app/widgets: {offenders}"


def test_headless_import_pulls_no_qt() -> None:
    """Importing the command line, the project and every step module loads no Qt at all."""
    import subprocess

    code = ("import sys, tomoguide.cli, tomoguide.project, tomoguide.runner\n"
            "from tomoguide.steps import registry\n"
            "registry.workflow()\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in %r]\n"
            "print(','.join(bad))" % (GUI_MODULES,))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
