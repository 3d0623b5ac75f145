"""The package layers, checked: imports point down and never reach another module's private names.

L1 ``vlm`` core (all of ``vlm/`` but ``vlm/cli``) < L2 ``eval`` and ``indexing`` (siblings that never import each
other) < L3 ``ui`` < L4 the faces: ``vlm/cli``, ``app.py``, ``bench/`` (faces may import each other). A lower layer
that needs something from a higher one takes it as an argument (the trainer's ``validate`` callable). The walk is
over the source text (``ast``), so nothing is imported and a planted tree in a temporary folder can be checked too.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("vlm", "eval", "indexing", "ui", "bench", "app")
FACES = 4


def layer(module: str) -> int | None:
    """The layer of a dotted module name of this project, or None for a module outside it."""
    top = module.split(".")[0]
    # `python -m vlm` (vlm/__main__.py) only starts the CLI: it is a face like the CLI itself.
    if module in ("vlm.cli", "vlm.__main__") or module.startswith("vlm.cli.") or top in ("app", "bench"):
        return FACES
    return {"vlm": 1, "eval": 2, "indexing": 2, "ui": 3}.get(top)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path) -> dict[str, Path]:
    found = {}
    for top in PACKAGES:
        single = root / f"{top}.py"
        if single.is_file():
            found[top] = single
        folder = root / top
        if folder.is_dir():
            for path in sorted(folder.rglob("*.py")):
                found[module_name(path, root)] = path
    return found


@dataclass(frozen=True)
class Violation:
    module: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line}: {self.what}"


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _owner(target: str, modules: dict[str, Path]) -> str | None:
    """The project module that ``target`` names (the longest known prefix), if any."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def check(root: Path) -> list[Violation]:
    """Every upward import, sibling import between eval and indexing, and private cross-module import under ``root``."""
    modules = project_modules(root)
    violations = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        here = layer(module)
        aliases: dict[str, str] = {}  # local name -> project module it is bound to
        for node in ast.walk(tree):
            targets: list[tuple[str, list[str]]] = []
            if isinstance(node, ast.Import):
                for alias in node.names:
                    targets.append((alias.name, []))
                    if _owner(alias.name, modules):
                        aliases[alias.asname or alias.name.split(".")[0]] = (
                            alias.name if alias.asname else alias.name.split(".")[0]
                        )
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node)
                names = [alias.name for alias in node.names]
                submodules = [n for n in names if f"{base}.{n}" in modules]
                if len(submodules) < len(names):  # names bound from the module itself (not its submodules)
                    targets.append((base, [n for n in names if n not in submodules]))
                targets.extend((f"{base}.{n}", []) for n in submodules)
                for alias in node.names:
                    if f"{base}.{alias.name}" in modules:
                        aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
            for target, names in targets:
                owner = _owner(target, modules)
                if owner is None:
                    continue
                there = layer(owner)
                if here is not None and there is not None:
                    if there > here:
                        violations.append(Violation(module, node.lineno, f"imports {target} from a higher layer"))
                    elif here == there == 2 and owner.split(".")[0] != module.split(".")[0]:
                        violations.append(Violation(module, node.lineno, f"imports its sibling {target}"))
                if owner != module:
                    for name in names:
                        if _private(name):
                            violations.append(Violation(module, node.lineno, f"imports private {owner}.{name}"))
        # Attribute access through a module bound by an import: ``from vlm import data; data._x``.
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                chain = []
                value = node.value
                while isinstance(value, ast.Attribute):
                    chain.append(value.attr)
                    value = value.value
                if isinstance(value, ast.Name) and value.id in aliases:
                    target = ".".join([aliases[value.id], *reversed(chain)])
                    if target in modules and target != module:
                        violations.append(Violation(module, node.lineno, f"uses private {target}.{node.attr}"))
    return sorted(set(violations), key=lambda v: (v.module, v.line, v.what))


def test_the_tree_keeps_its_layers():
    violations = check(ROOT)
    assert not violations, "layer violations:\n" + "\n".join(map(str, violations))


def _plant(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


BASE = {
    "vlm/__init__.py": "",
    "vlm/core.py": "def public():\n    pass\n\ndef _hidden():\n    pass\n",
    "vlm/cli/__init__.py": "",
    "vlm/cli/main.py": "from vlm import core\nfrom ui import tab\n",
    "eval/__init__.py": "",
    "eval/metrics.py": "from vlm.core import public\n",
    "indexing/__init__.py": "",
    "indexing/store.py": "import vlm.core\n",
    "ui/__init__.py": "",
    "ui/tab.py": "from eval import metrics\nfrom indexing.store import *\n",
    "bench/__init__.py": "",
    "bench/one.py": "from vlm.cli import main\nimport numpy\n",
    "app.py": "from vlm.cli.main import core\n",
}


def test_a_clean_planted_tree_passes(tmp_path):
    assert check(_plant(tmp_path, BASE)) == []


@pytest.mark.parametrize(
    ("path", "text", "expected"),
    [
        ("vlm/core2.py", "from eval import metrics\n", "imports eval.metrics from a higher layer"),
        ("vlm/core2.py", "import ui.tab\n", "imports ui.tab from a higher layer"),
        ("vlm/core2.py", "from vlm.cli.main import core\n", "imports vlm.cli.main from a higher layer"),
        ("vlm/core2.py", "def f():\n    from indexing import store\n", "imports indexing.store from a higher layer"),
        ("eval/x.py", "from indexing.store import thing\n", "imports its sibling indexing.store"),
        ("ui/x.py", "from bench.one import y\n", "imports bench.one from a higher layer"),
        ("eval/x.py", "from vlm.core import _hidden\n", "imports private vlm.core._hidden"),
        ("eval/x.py", "from vlm import core\ncore._hidden()\n", "uses private vlm.core._hidden"),
        ("eval/x.py", "import vlm.core\nvlm.core._hidden()\n", "uses private vlm.core._hidden"),
        ("vlm/x.py", "from .core import _hidden\n", "imports private vlm.core._hidden"),
    ],
)
def test_a_planted_violation_fails(tmp_path, path, text, expected):
    violations = check(_plant(tmp_path, {**BASE, path: text}))
    assert [v.what for v in violations] == [expected]
