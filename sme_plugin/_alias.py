"""Make a package imported by its source folder name the same module objects as its installed name."""

from __future__ import annotations

import importlib
import sys


def alias_package(old: str, new: str) -> None:
    """``sys.modules[old]`` (and every ``old.<sub>``) become ``new`` (and ``new.<sub>``)."""
    package = importlib.import_module(new)
    sys.modules[old] = package
    for name, module in list(sys.modules.items()):
        if name.startswith(new + "."):
            sys.modules[old + name[len(new):]] = module
