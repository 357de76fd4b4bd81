"""``Value``: the base of zentry's small record classes (outside the messages).

A record class lists its fields in ``__slots__`` and writes its own
``__init__``; ``Value`` compares, hashes and prints by those fields. It
stands in for ``dataclasses``, whose import (inspect, ast, dis: ~15 ms)
and per-class code generation sat on the path of every sandbox start and
every ``zentry tap``. Records are treated as immutable; nothing enforces
it. A mutable one sets ``__hash__ = None``.
"""

from __future__ import annotations


class Value:
    __slots__ = ()

    def _fields(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._fields() == other._fields()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._fields()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({inner})"
