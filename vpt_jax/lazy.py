"""Names a package exports but imports only on first use (so importing it stays cheap)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def exports(package: str, table: Mapping[str, str]) -> tuple[Callable, Callable]:
    """`(__getattr__, __dir__)` for a package whose names in `table` live in the modules named.

    In the package's `__init__`: `__getattr__, __dir__ = lazy.exports(__name__, {"f": "pkg.mod"})`.
    """

    def getattr_(name: str) -> Any:
        if name in table:
            return getattr(importlib.import_module(table[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def dir_() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(table))

    return getattr_, dir_
