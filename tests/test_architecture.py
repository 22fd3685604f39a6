"""docs/architecture.md's rules, checked: imports point down the layers, no module reaches into
another's underscore names, none is over 500 lines."""

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "dind"
DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def layers() -> dict[str, int]:
    """Module -> layer (0 on top), read from the diagram in docs/architecture.md."""
    diagram = DOC.read_text().split("```")[1]
    out, layer = {}, 0
    for line in diagram.splitlines():
        if line.strip().startswith("─"):
            layer += 1
        for name in re.findall(r"\b(\w+)\.py\b", line):
            out[name] = layer
    return out


def imports(path: Path):
    """(module imported, names taken) for every ``dind`` import of a file."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dind"):
            if node.module == "dind":
                for a in node.names:
                    yield a.name, []
            else:
                yield node.module.split(".")[1], [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("dind."):
                    yield a.name.split(".")[1], []


def modules() -> list[Path]:
    return [p for p in sorted(SRC.glob("*.py")) if p.stem != "__init__"]


def test_every_module_is_in_the_diagram():
    assert {p.stem for p in modules()} - set(layers()) == set()


def test_imports_point_down_the_layers():
    where = layers()
    upward = [
        f"{p.stem} (layer {where[p.stem]}) imports {m} (layer {where[m]})"
        for p in modules()
        for m, _ in imports(p)
        if m in where and where[m] < where[p.stem]
    ]
    assert upward == []


def test_no_module_takes_another_modules_private_names():
    private = [
        f"{p.stem} imports {m}.{n}"
        for p in modules()
        for m, names in imports(p)
        for n in names
        if n.startswith("_") and m != p.stem
    ]
    assert private == []


def test_no_module_is_over_500_lines():
    long = {p.stem: n for p in modules() if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}
