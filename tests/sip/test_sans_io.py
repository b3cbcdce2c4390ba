"""The protocol core never does I/O or reads a clock (STYLE.md, rule 1).

Two checks. Statically, no module under ``siptrio/sip`` or ``siptrio/core`` imports
trio, socket, ssl, time, asyncio or selectors. Dynamically, importing all of them in
a fresh interpreter leaves trio, socket, ssl and asyncio unloaded (this catches
indirect imports).

``time`` (and ``selectors``) are checked statically only: CPython's own start-up
imports ``time`` (the frozen ``importlib._bootstrap_external``), and so does
``logging``, which the core may legitimately use to log what it does not understand
(STYLE.md rule 10). Neither reads the clock on the core's behalf.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("siptrio/sip", "siptrio/core")
FORBIDDEN = frozenset({"trio", "socket", "ssl", "time", "asyncio", "selectors"})
NOT_LOADED = ("trio", "socket", "ssl", "asyncio")


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


SOURCES = _sources()
MODULES = [_module_name(p) for p in SOURCES]


def test_packages_have_modules() -> None:
    assert "siptrio.sip.parser" in MODULES
    assert "siptrio.core" in MODULES


def _absolute_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            # __import__("socket") / importlib.import_module("socket")
            func = node.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if called in ("__import__", "import_module") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


@pytest.mark.parametrize("path", SOURCES, ids=MODULES)
def test_source_imports_no_io_or_clock(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bad = [
        f"{path.relative_to(REPO)}:{line}: import {name}"
        for line, name in _absolute_imports(tree)
        if name.split(".")[0] in FORBIDDEN
    ]
    assert not bad, "\n".join(bad)


_CHILD = """
import json, sys
already = [m for m in {names!r} if m in sys.modules]
for name in {modules!r}:
    __import__(name)
print(json.dumps([m for m in {names!r} if m in sys.modules and m not in already]))
"""


def test_importing_everything_loads_no_io_module() -> None:
    code = _CHILD.format(modules=MODULES, names=NOT_LOADED)
    result = subprocess.run(
        [sys.executable, "-E", "-c", code],  # -c puts cwd (the repo) first on sys.path
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing siptrio.sip and siptrio.core loaded {loaded}"


# --- no state at module level -------------------------------------------------------------

_MUTABLE = (dict, list, set, bytearray)


def test_no_module_level_mutable_state_but_bounded_caches() -> None:
    """The core's state lives in objects the shell builds (STYLE.md rule 1): nothing
    mutable at module level except the wire layer's bounded parse caches, which
    ``parse_caches()`` names and a test can clear. Constants are tuples, frozensets and
    read-only mappings; counters and secrets come in through constructors."""
    import importlib
    import itertools
    import random

    from siptrio.sip._abnf import BoundedCache

    found = []
    for name in MODULES:
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if attr.startswith("__") or (
                getattr(value, "__module__", name) != name
                and (isinstance(value, type) or callable(value))
            ):
                continue
            if isinstance(value, BoundedCache):
                continue
            if isinstance(value, (*_MUTABLE, itertools.count, random.Random)):
                found.append(f"{name}.{attr}: {type(value).__name__}")
    assert not found, "module-level mutable state:\n" + "\n".join(found)


def test_the_parse_caches_are_named_bounded_and_clearable() -> None:
    from siptrio.sip import parse_message_untrusted
    from siptrio.sip.caches import clear_parse_caches, parse_caches

    msg = parse_message_untrusted(
        b"OPTIONS sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1\r\n"
        b"From: <sip:b@example.com>;tag=1\r\nTo: <sip:a@example.com>\r\nCall-ID: c\r\n"
        b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    assert msg.vias  # parsing the Via fills its cache
    caches = parse_caches()
    assert {"Via", "URIs", "header lines", "CSeq", "name-addr"} <= set(caches)
    assert all(c.bound > 0 for c in caches.values())
    assert any(len(c) for c in caches.values())
    clear_parse_caches()
    assert not any(len(c) for c in caches.values())
