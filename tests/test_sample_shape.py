"""One sample shape: the StreamVLN values 32/8/4 are written once (config/sample_shape.py).

Fast: no server, no model. The literal check reads every module of the library, the tasks and
the flows with `ast`, so a new `num_history=8` anywhere fails here with its file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest

from streamvln_model.config.sample_shape import STREAMVLN_SHAPE, SampleShape

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("streamvln_model", "tasks", "flows")
DECLARATION = REPO_ROOT / "streamvln_model" / "config" / "sample_shape.py"
SHAPE_NAMES = {"num_frames", "num_history", "num_future_steps"}
SHAPE_VALUES = {32, 8, 4}


def _name(node: ast.AST) -> str | None:
    """`num_history` for `num_history`, `self.num_history`, `args["num_history"]`, "num_history"."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Subscript):
        return _name(node.slice)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.lstrip("-").replace("-", "_")  # "--num-future-steps" too
    return None


def _is_shape_name(name: str | None) -> bool:
    """`num_history`, and names ending in one (`DEFAULT_NUM_FRAMES`, `max_num_frames`)."""
    return name is not None and name.lower().endswith(tuple(SHAPE_NAMES))


def _literal(node: ast.AST | None) -> bool:
    """An int literal 32, 8 or 4 (`field(default=8)` and `-8` included)."""
    if isinstance(node, ast.UnaryOp):
        node = node.operand
    if isinstance(node, ast.Call):  # dataclasses.field(default=8)
        return any(k.arg == "default" and _literal(k.value) for k in node.keywords)
    return isinstance(node, ast.Constant) and type(node.value) is int and node.value in SHAPE_VALUES


def shape_literals(source: str, filename: str = "<source>") -> list[str]:
    """`file:line: name = value` for every sample-shape name given one of the StreamVLN values."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename)):
        pairs: list[tuple[ast.AST, ast.AST | None]] = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = node.args
            positional = [*args.posonlyargs, *args.args]
            pairs += zip(positional[len(positional) - len(args.defaults) :], args.defaults, strict=True)
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d]
            pairs = [(ast.Name(a.arg), d) for a, d in pairs]
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                targets = target.elts if isinstance(target, (ast.Tuple, ast.List)) else [target]
                values = node.value.elts if isinstance(node.value, (ast.Tuple, ast.List)) else None
                if values is not None and len(values) == len(targets):
                    pairs += zip(targets, values, strict=True)
                else:
                    pairs += [(t, node.value) for t in targets]
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            pairs.append((node.target, node.value))
        elif isinstance(node, ast.Call):
            pairs += [(ast.Name(k.arg), k.value) for k in node.keywords if k.arg]
            # argparse: add_argument("--num_history", type=int, default=8)
            names = [_name(a) for a in node.args if _is_shape_name(_name(a))]
            if names:
                name = names[0]
                pairs += [(ast.Name(name), k.value) for k in node.keywords if k.arg == "default"]
        elif isinstance(node, ast.BoolOp):  # config.num_future_steps or 4
            named = [v for v in node.values if _is_shape_name(_name(v))]
            pairs += [(named[0], v) for v in node.values if named and _literal(v)]
        elif isinstance(node, ast.Dict):
            pairs += [(k, v) for k, v in zip(node.keys, node.values, strict=True) if k is not None]
        for target, value in pairs:
            if _is_shape_name(_name(target)) and _literal(value):
                found.append((value.lineno, f"{_name(target)} = {ast.unparse(value)}"))
    return [f"{filename}:{line}: {text}" for line, text in sorted(set(found))]


def test_the_streamvln_values_are_declared_once():
    found = []
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            if path != DECLARATION:
                found += shape_literals(path.read_text(), str(path.relative_to(REPO_ROOT)))
    assert found == [], "use streamvln_model.config.sample_shape.STREAMVLN_SHAPE instead:\n" + "\n".join(
        found
    )
    # ... and the declaration itself has them, once.
    assert len(shape_literals(DECLARATION.read_text())) == 3


@pytest.mark.parametrize(
    "planted",
    [
        "def f(num_history: int = 8): ...",
        "def f(*, num_frames=32): ...",
        "class S:\n    num_future_steps: int = 4",
        "class S:\n    num_frames: int | None = field(default=32)",
        "num_history = 8",
        "NUM_FRAMES, num_history = 1, 8",
        "self.num_future_steps = 4",
        "make(num_history=8)",
        "parser.add_argument('--num_frames', type=int, default=32)",
        "parser.add_argument('--num-future-steps', type=int, default=4)",
        "flags = {'num_history': 8}",
        "DEFAULT_NUM_FRAMES = 32",
        "turn = int(config.num_future_steps or 4) + 4",
    ],
)
def test_the_check_finds_a_planted_literal(planted):
    assert shape_literals(planted) != []


@pytest.mark.parametrize(
    "fine",
    [
        "def f(num_history: int = STREAMVLN_SHAPE.num_history): ...",
        "num_frames = 16",
        "x = 8",
        "make(num_history=None)",
        "parser.add_argument('--num', type=int, default=4)",
    ],
)
def test_the_check_leaves_other_values_alone(fine):
    assert shape_literals(fine) == []


def test_the_published_parser_defaults_are_kept():
    """The published command lines resolve as published: only num_frames' default is StreamVLN's."""
    from streamvln_model.config.arguments import default_of

    assert default_of("num_frames") == STREAMVLN_SHAPE.num_frames == 32
    assert (default_of("num_history"), default_of("num_future_steps")) == (None, 1)
    assert SampleShape(num_frames=32, num_history=8, num_future_steps=4) == STREAMVLN_SHAPE


def test_from_arguments_fills_what_the_run_left_unset():
    published = SimpleNamespace(num_frames=32, num_history=None, num_future_steps=1)
    # Unset (None) fields take StreamVLN's value; set ones stay.
    assert SampleShape.from_arguments(published) == SampleShape(32, 8, 1)
    assert SampleShape.from_arguments({"num_frames": 16, "num_history": 4}) == SampleShape(16, 4, 4)
    # With the flags the user named: a parser default the user did not name is StreamVLN's too.
    assert SampleShape.from_arguments(published, given={"video_folder"}) == STREAMVLN_SHAPE
    assert SampleShape.from_arguments(published, given={"num_future_steps"}) == SampleShape(32, 8, 1)


def test_evaluation_takes_the_shape_fields_it_was_not_given_from_the_models():
    from streamvln_model.registry.heldout import SampleSettings, common_settings

    model = SimpleNamespace(num_history=4, num_future_steps=2, tokenizer_model_max_length=2048)
    settings = common_settings(SampleSettings.asked({}), {"a": model, "b": model})
    assert settings.shape == SampleShape(32, 4, 2)  # num_frames: StreamVLN's; the rest: the models'
    assert settings.record() == {
        "num_frames": 32,
        "num_history": 4,
        "num_future_steps": 2,
        "model_max_length": 2048,
    }
    asked = SampleSettings.asked({"num_frames": 16, "num_history": 8, "other": 1}, model_max_length=512)
    assert common_settings(asked, {"a": model}).shape == SampleShape(16, 8, 2)
    other = SimpleNamespace(num_history=8, num_future_steps=2, tokenizer_model_max_length=None)
    with pytest.raises(ValueError, match="num_history differs"):
        common_settings(SampleSettings.asked({}), {"a": model, "b": other})
    assert common_settings(asked, {"a": model, "b": other}).shape == SampleShape(16, 8, 2)
