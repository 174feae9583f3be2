from __future__ import annotations

import dataclasses
from datetime import date, datetime
from decimal import Decimal

import pytest
from pydantic import BaseModel

from flowai_harness import glimpse


class Item(BaseModel):
    sku: str
    when: date


@dataclasses.dataclass
class Point:
    x: int
    y: Decimal


def test_negative_max_items() -> None:
    with pytest.raises(ValueError, match="max_items must be non-negative"):
        glimpse([1], max_items=-1)


def test_mapping_returned_as_plain_dict() -> None:
    assert glimpse({"a": 1, 2: "b"}) == {"a": 1, "2": "b"}


def test_sequences_count_and_sample() -> None:
    assert glimpse([1, 2, 3, 4, 5]) == {"count": 5, "sample": [1, 2, 3]}
    assert glimpse((1, 2), max_items=1) == {"count": 2, "sample": [1]}
    assert glimpse(x for x in range(4)) == {"count": 4, "sample": [0, 1, 2]}
    assert glimpse({7}) == {"count": 1, "sample": [7]}
    assert glimpse([1, 2], max_items=0) == {"count": 2, "sample": []}


def test_scalars() -> None:
    assert glimpse(3) == {"value": 3}
    assert glimpse("text") == {"value": "text"}
    assert glimpse(b"raw") == {"value": b"raw"}
    assert glimpse(None) == {"value": None}
    assert glimpse(Decimal("1.50")) == {"value": "1.50"}
    assert glimpse(Decimal("1E+2")) == {"value": "100"}
    assert glimpse(datetime(2026, 5, 15, 12, 30)) == {"value": "2026-05-15T12:30:00"}
    assert glimpse(date(2026, 5, 15)) == {"value": "2026-05-15"}


def test_models_and_dataclasses() -> None:
    assert glimpse(Item(sku="a", when=date(2026, 1, 2))) == {"sku": "a", "when": "2026-01-02"}
    assert glimpse(Point(1, Decimal("2.5"))) == {"x": 1, "y": "2.5"}
    assert glimpse([Item(sku="a", when=date(2026, 1, 2))]) == {
        "count": 1,
        "sample": [{"sku": "a", "when": "2026-01-02"}],
    }


def test_nested_conversion() -> None:
    assert glimpse({"d": Decimal("3"), "t": (1, 2), "s": [date(2026, 1, 1)]}) == {
        "d": "3",
        "t": [1, 2],
        "s": ["2026-01-01"],
    }
