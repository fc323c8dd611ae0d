"""CI phase "dead code": vulture over the product code, settings in pyproject.toml [tool.vulture].

vulture reports definitions that no code uses by name. Dropped before reporting: fields declared
in a class body (`name: type [= default]` in a dataclass, pydantic model or NamedTuple), and
assignments to such a field, which asdict, model_dump, HfArgumentParser and JSON round trips
read without naming them. Anything else vulture reports fails the check (exit 1): delete it,
or, for a name a framework calls or reads, add it to `ignore_names` in pyproject.toml or a use
of it to .vulture_whitelist.py.

    .venv/bin/python scripts/dead_code.py [vulture options, e.g. --min-confidence 100]
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from vulture.config import make_config
from vulture.core import Vulture


def class_fields(path: Path) -> list[ast.AnnAssign]:
    """The `name: type` statements directly in a class body of `path`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        statement
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        for statement in node.body
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
    ]


def python_files(paths: list[str]) -> list[Path]:
    return [f for p in map(Path, paths) for f in ([p] if p.is_file() else sorted(p.rglob("*.py")))]


def main(argv: list[str] | None = None) -> int:
    config = make_config(argv)
    vulture = Vulture(ignore_names=config["ignore_names"], ignore_decorators=config["ignore_decorators"])
    vulture.scavenge(config["paths"], exclude=config["exclude"])
    fields = {path.resolve(): class_fields(path) for path in python_files(config["paths"])}
    field_lines = {(path, f.lineno) for path, found in fields.items() for f in found}
    field_names = {f.target.id for found in fields.values() for f in found}
    unused = [
        item
        for item in vulture.get_unused_code(min_confidence=config["min_confidence"])
        if not (item.typ == "variable" and (Path(item.filename).resolve(), item.first_lineno) in field_lines)
        and not (item.typ == "attribute" and item.name in field_names)
    ]
    for item in unused:
        print(item.get_report())
    return 1 if unused or vulture.exit_code else 0


if __name__ == "__main__":
    sys.exit(main())
