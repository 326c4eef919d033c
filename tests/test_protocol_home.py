"""The wire protocol has one home: federation/protocol.py.

Message types, record names and field keys are constants there; the two roles (and everything
else) read them from it. This scans the source (not the tests) for protocol spellings outside
protocol.py:

1. any string literal equal to a distinctive protocol value (one with ``-`` or ``.``, such as
   ``"num-examples"`` or ``"query.screen"``), anywhere but in the modules that parse Flower's
   own output (``FLOWER_FACING``: Flower spells some things as we do);
2. in ``clients/`` and ``server/``: a string-literal key in a dict given to a Flower record
   (``ConfigRecord({...})``, ``MetricRecord``, ``ArrayRecord``, ``RecordDict``,
   ``bytes_record``), and a string-literal key read from a message's record (``rec["k"]``,
   ``rec.get("k")`` where ``rec`` comes from ``content.config_records`` and the like in the
   same function). Flat run-config keys are allowed: their home is ``federation.config``
   (``FLAT_KEYS``). A node's own state (records stored in ``state``) is not the wire.

Known gap: a one-word metric key written into a plain dict (``metrics["steps"]``) before it
becomes a MetricRecord is not caught by rule 2; rule 1 catches every hyphenated one.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from federation import protocol as P
from federation.config import FLAT_KEYS

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("federation", "crypto", "clients", "server", "simulations")
ROLES = ("clients", "server")
RECORD_CALLS = {"ConfigRecord", "MetricRecord", "ArrayRecord", "RecordDict", "bytes_record"}
RECORD_ATTRS = ("config_records", "metric_records", "array_records")
# Modules that read Flower's own output (log lines, CLI JSON): its spellings are not ours.
FLOWER_FACING = {"federation/flower_internals.py", "clients/deploy.py", "server/deploy.py",
                 "simulations/deploy.py"}

VALUES = {v for k, v in vars(P).items() if k.isupper() and isinstance(v, str)}
DISTINCTIVE = {v for v in VALUES if "-" in v or "." in v}


def _sources(packages: tuple[str, ...]) -> Iterator[tuple[str, ast.Module]]:
    for pkg in packages:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel != "federation/protocol.py":
                yield rel, ast.parse(path.read_text(encoding="utf-8"))


def _str(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _call_name(call: ast.Call) -> str:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def _root(expr: ast.AST) -> str:
    while isinstance(expr, ast.Attribute | ast.Subscript | ast.Call):
        expr = expr.func if isinstance(expr, ast.Call) else expr.value
    return expr.id if isinstance(expr, ast.Name) else ""


def _from_records(expr: ast.AST, record_vars: set[str]) -> bool:
    if _root(expr) == "state":  # the node's own state, not a message
        return False
    text = ast.unparse(expr)
    if any(a in text for a in RECORD_ATTRS):
        return True
    return isinstance(expr, ast.Name) and expr.id in record_vars


def _state_writes(fn: ast.AST) -> set[int]:
    """ids of record constructors stored into the node state (``state[K] = ConfigRecord(...)``)."""
    out: set[int] = set()
    for node in ast.walk(fn):
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and any(_root(t) == "state" for t in node.targets)):
            out.add(id(node.value))
    return out


def _literal_record_keys(tree: ast.Module) -> Iterator[tuple[int, str]]:
    for fn in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]:
        record_vars: set[str] = set()
        for node in ast.walk(fn):  # names bound to records read from a message or a state
            if isinstance(node, ast.Assign | ast.NamedExpr):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if _from_records(node.value, set()):
                    record_vars.update(t.id for t in targets if isinstance(t, ast.Name))
        stored = _state_writes(fn)
        for node in ast.walk(fn):
            if isinstance(node, ast.Call) and _call_name(node) in RECORD_CALLS and id(node) not in stored:
                for arg in node.args:
                    if isinstance(arg, ast.Dict):
                        for key in arg.keys:
                            if (s := _str(key)) is not None:
                                yield key.lineno, s
            if isinstance(node, ast.Subscript) and _from_records(node.value, record_vars):
                if (s := _str(node.slice)) is not None and not isinstance(node.value, ast.Attribute):
                    yield node.lineno, s
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "get" and node.args
                    and _from_records(node.func.value, record_vars)
                    and not (isinstance(node.func.value, ast.Attribute)
                             and node.func.value.attr in RECORD_ATTRS)):
                if (s := _str(node.args[0])) is not None:
                    yield node.lineno, s


def test_the_protocol_module_names_every_value_once() -> None:
    names = [k for k, v in vars(P).items() if k.isupper() and isinstance(v, str)]
    assert sorted(P.__all__) == sorted(names)
    spellings = [getattr(P, k) for k in names]
    assert all(s == s.strip() and s for s in spellings)


def test_no_distinctive_protocol_spelling_outside_protocol_py() -> None:
    found = [f"{rel}:{node.lineno}: {node.value!r}"
             for rel, tree in _sources(PACKAGES) if rel not in FLOWER_FACING for node in ast.walk(tree)
             if isinstance(node, ast.Constant) and node.value in DISTINCTIVE]
    assert found == [], "use the federation.protocol constant instead:\n" + "\n".join(found)


def test_the_roles_read_and_write_records_through_named_keys() -> None:
    found = [f"{rel}:{line}: {key!r}" for rel, tree in _sources(ROLES)
             for line, key in _literal_record_keys(tree) if key not in FLAT_KEYS]
    assert found == [], ("name record keys in federation/protocol.py (wire) or once per module "
                         "(node state):\n" + "\n".join(found))
