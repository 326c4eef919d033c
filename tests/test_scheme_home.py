"""The trainer's transport choice has one home: clients/schemes.py (issue 13).

The server chooses its scheme once (``server.app.make_scheme``); the trainer mirrors it with
``clients.schemes.trainer_scheme``. This scans the source of every other module in
``clients/`` for a branch on the secure-aggregation mode, in any of the spellings one could
take it in:

1. the name ``SecureAggregation`` (imported, read, or compared against);
2. the typed config field (``cfg.secure.mode``, the section and field named by
   ``federation.config.FLAT_KEYS``);
3. the flat key (``"secure-aggregation"``) as a string literal, i.e. read out of a flat
   config record;
4. a comparison with a mode's value (``x == "ckks"``).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from federation.config import FLAT_KEYS, SecureAggregation

ROOT = Path(__file__).resolve().parent.parent
HOME = "clients/schemes.py"
[FLAT_KEY] = [k for k, v in FLAT_KEYS.items() if v == ("secure", "mode")]
SECTION, FIELD = FLAT_KEYS[FLAT_KEY]
MODES = {m.value for m in SecureAggregation}


def _mode_branches(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == SecureAggregation.__name__:
            found.append((node.lineno, node.id))
        elif isinstance(node, ast.alias) and node.name == SecureAggregation.__name__:
            found.append((getattr(node, "lineno", 0), f"import {node.name}"))
        elif isinstance(node, ast.Attribute) and node.attr == SecureAggregation.__name__:
            found.append((node.lineno, ast.unparse(node)))
        elif (isinstance(node, ast.Attribute) and node.attr == FIELD
              and isinstance(node.value, ast.Attribute) and node.value.attr == SECTION):
            found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.Constant) and node.value == FLAT_KEY:
            found.append((node.lineno, repr(node.value)))
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Constant) and o.value in MODES for o in operands):
                found.append((node.lineno, ast.unparse(node)))
    return found


def test_no_module_of_clients_but_the_scheme_module_branches_on_the_mode() -> None:
    found = []
    for path in sorted((ROOT / "clients").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel != HOME:
            found += [f"{rel}:{line}: {what}"
                      for line, what in _mode_branches(ast.parse(path.read_text(encoding="utf-8")))]
    assert found == [], ("choose the transport through clients.schemes.trainer_scheme:\n"
                         + "\n".join(found))


def test_the_scheme_module_is_where_the_choice_is_made() -> None:
    assert _mode_branches(ast.parse((ROOT / HOME).read_text(encoding="utf-8")))
    schemes = importlib.import_module("clients.schemes")
    assert {"TrainerScheme", "trainer_scheme"} <= set(schemes.__all__)
    assert all(hasattr(schemes, name) for name in schemes.__all__)


def test_the_scan_sees_each_spelling_of_a_mode_branch() -> None:
    # the branches clients/ held before the trainer had a scheme (handlers, mods, secure, encrypted)
    spellings = {
        "from federation.config import SecureAggregation": 1,
        "if cfg.secure.mode is config.SecureAggregation.CKKS: pass": 2,
        "ckks = rec.get('secure-aggregation') == 'ckks'": 2,
        "if mode != 'none': pass": 1,
        "if cfg.dp.mode == 'rdp': pass": 0,
    }
    for source, count in spellings.items():
        assert len(_mode_branches(ast.parse(source))) == count, source
