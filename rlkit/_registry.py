"""A tiny name -> callable registry with the import-path escape hatch (DESIGN rule 4)."""

from __future__ import annotations

import importlib
from collections.abc import Callable


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable] = {}

    def register(self, name: str) -> Callable:
        def deco(fn: Callable) -> Callable:
            if name in self._items and self._items[name] is not fn:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = fn
            return fn

        return deco

    def names(self) -> list[str]:
        return sorted(self._items)

    def resolve(self, name: str) -> Callable:
        """Registered name or 'package.module:function'; KeyError lists the valid names."""
        if name in self._items:
            return self._items[name]
        if ":" in name:
            module_name, _, attr = name.partition(":")
            try:
                return getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError) as e:
                raise KeyError(f"cannot load {self.kind} {name!r}: {e}") from None
        raise KeyError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())} "
                       "(or an import path 'package.module:function')")
