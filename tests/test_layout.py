"""The floors of the house (docs/layout.md): every library module sits on one floor and imports
only from floors below it, lazy imports included, so the engine never calls up into what uses it."""
import ast
from pathlib import Path

import mmue_lib

FLOORS = [
    {"storage", "distributed", "metrics", "progress"},
    {"checkpoint", "data", "models"},
    {"collector"},
    {"defenses", "faces"},
    {"train"},
    {"methods", "explain"},
    {"triggers"},
    {"protect", "t2ue"},
    {"release", "paper", "outfolder"},
    {"check"},
    {"cache"},
    {"records"},
    {"runs"},
    {"settings", "tables", "figures"},
    {"experiments", "photos"},
    {"cli", "notebooks"},
]
LIBRARY = Path(mmue_lib.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """The mmue_lib modules that a module imports (`from . import x`, `from .x import y`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names |= {alias.name for alias in node.names} if node.module is None else {node.module.split(".")[0]}
    return names


def test_every_module_is_on_one_floor_and_imports_only_from_below():
    floor_of = {name: index for index, floor in enumerate(FLOORS) for name in floor}
    modules = sorted(path.stem for path in LIBRARY.glob("*.py") if path.stem != "__init__")
    assert sorted(floor_of) == modules, "put each new module on a floor (here and in docs/layout.md)"
    upward = [f"{name} imports {other}" for name in modules for other in imported_modules(LIBRARY / f"{name}.py")
              if floor_of[other] >= floor_of[name]]
    assert upward == []
