"""bus.value.Value: records compared, hashed and printed by their slots."""

from __future__ import annotations

import pytest

from zentry.bus.value import Value


class Point(Value):
    __slots__ = ("x", "y")

    def __init__(self, x: int, y: int = 0) -> None:
        self.x = x
        self.y = y


class Other(Value):
    __slots__ = ("x", "y")

    def __init__(self, x: int, y: int = 0) -> None:
        self.x = x
        self.y = y


class Bag(Value):
    __slots__ = ("items",)
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, items: list) -> None:
        self.items = items


def test_equal_by_fields_and_type():
    assert Point(1, 2) == Point(1, 2)
    assert Point(1, 2) != Point(1, 3)
    assert Point(1, 2) != Other(1, 2)  # same fields, another type
    assert len({Point(1, 2), Point(1, 2), Point(2, 1)}) == 2


def test_repr_names_every_field():
    assert repr(Point(1)) == "Point(x=1, y=0)"


def test_mutable_record_is_unhashable():
    assert Bag([1]) == Bag([1])
    with pytest.raises(TypeError):
        hash(Bag([1]))
