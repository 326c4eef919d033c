"""Imports point one way (DESIGN.md §2), only crypto/ imports tenseal, public surfaces exist."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("federation", "crypto", "clients", "server", "simulations")
ALLOWED: dict[str, set[str]] = {
    "federation": set(),
    "crypto": {"federation"},
    "clients": {"federation", "crypto"},
    "server": {"federation", "crypto"},
    "simulations": {"federation", "crypto", "clients", "server"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_one_way(package: str) -> None:
    for path in _modules(package):
        ours = _imports(path) & set(PACKAGES) - {package}
        bad = ours - ALLOWED[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)} (not allowed for {package}/)"


def test_only_crypto_private_module_imports_tenseal() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for pkg in PACKAGES
        for p in _modules(pkg)
        if "tenseal" in _imports(p) and p != ROOT / "crypto" / "_seal.py"
    ]
    assert offenders == []


def test_only_crypto_touches_cryptography_primitives() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for pkg in PACKAGES
        if pkg != "crypto"
        for p in _modules(pkg)
        if "cryptography" in _imports(p)
    ]
    assert offenders == []


@pytest.mark.parametrize(
    "module",
    ["federation.config", "federation.errors", "federation.protocol", "federation.aggregation",
     "federation.robust", "federation.data", "federation.partition", "federation.privacy",
     "federation.tasks", "federation.records", "crypto.keys", "crypto.wrapping", "crypto.at_rest",
     "crypto.provisioning", "crypto.passphrase", "crypto.tls", "server.loop",
     "server.schemes", "clients.handlers", "clients.schemes", "simulations.attacks"],
)
def test_public_surface_is_explicit(module: str) -> None:
    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", None)
    assert names, f"{module} has no __all__"
    missing = [n for n in names if not hasattr(mod, n)]
    assert missing == [], f"{module}.__all__ names missing attributes: {missing}"
