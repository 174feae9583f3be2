from __future__ import annotations

from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from flowai_harness import TaggedUnion, normalize_schema


class PriceChange(BaseModel):
    kind: Literal["price_change"]
    product_id: str
    new_price: float


class Discontinue(BaseModel):
    kind: Annotated[Literal["discontinue"], Field(description="tag")]
    product_id: str


class Restock(BaseModel):
    kind: str = "restock"
    quantity: int


def test_literal_and_annotated_variants() -> None:
    Action = TaggedUnion(PriceChange, Discontinue)
    adapter: TypeAdapter[Any] = TypeAdapter(Action)
    assert isinstance(adapter.validate_python({"kind": "discontinue", "product_id": "p"}), Discontinue)
    assert isinstance(adapter.validate_python({"kind": "price_change", "product_id": "p", "new_price": 1}), PriceChange)


def test_shorthand_variant_is_required_literal_subclass() -> None:
    Action = TaggedUnion(PriceChange, Restock)
    adapter: TypeAdapter[Any] = TypeAdapter(Action)
    value = adapter.validate_python({"kind": "restock", "quantity": 3})
    assert isinstance(value, Restock)
    assert type(value).__name__ == "Restock"
    assert type(value).__qualname__ == Restock.__qualname__
    assert type(value).__module__ == Restock.__module__
    with pytest.raises(ValidationError):
        adapter.validate_python({"quantity": 3})


def test_json_schema_has_one_of_and_discriminator() -> None:
    class Plan(BaseModel):
        actions: list[TaggedUnion(PriceChange, Restock)]  # type: ignore[valid-type]

    schema = normalize_schema(Plan)
    items = schema["properties"]["actions"]["items"]
    assert "oneOf" in items
    assert items["discriminator"]["propertyName"] == "kind"
    assert "Tagged" not in str(schema)
    restock = next(v for v in items["oneOf"] if v.get("title") == "Restock")
    assert "kind" in restock["required"]
    assert restock["properties"]["kind"]["const"] == "restock"


def test_tag_errors_from_pydantic() -> None:
    adapter: TypeAdapter[Any] = TypeAdapter(TaggedUnion(PriceChange, Restock))
    with pytest.raises(ValidationError) as missing:
        adapter.validate_python({"product_id": "p"})
    assert "kind" in str(missing.value)
    with pytest.raises(ValidationError) as unknown:
        adapter.validate_python({"kind": "bogus"})
    text = str(unknown.value)
    assert "bogus" in text and "price_change" in text and "restock" in text


def test_custom_discriminator() -> None:
    class A(BaseModel):
        type: Literal["a"]

    class B(BaseModel):
        type: Literal["b"]

    adapter: TypeAdapter[Any] = TypeAdapter(TaggedUnion(A, B, discriminator="type"))
    assert isinstance(adapter.validate_python({"type": "b"}), B)


def test_needs_two_models() -> None:
    with pytest.raises(ValueError, match="TaggedUnion requires at least two Pydantic models"):
        TaggedUnion(PriceChange)


def test_variants_must_be_models() -> None:
    with pytest.raises(TypeError, match="TaggedUnion variants must be Pydantic BaseModel classes"):
        TaggedUnion(PriceChange, dict)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="TaggedUnion variants must be Pydantic BaseModel classes"):
        TaggedUnion(PriceChange, PriceChange(kind="price_change", product_id="p", new_price=1))  # type: ignore[arg-type]


def test_missing_discriminator_field() -> None:
    class NoKind(BaseModel):
        x: int

    with pytest.raises(ValueError, match="NoKind is missing discriminator field `kind`"):
        TaggedUnion(PriceChange, NoKind)


def test_bad_discriminator_declarations() -> None:
    class Two(BaseModel):
        kind: Literal["a", "b"]

    class Empty(BaseModel):
        kind: Literal[""]

    class Plain(BaseModel):
        kind: str

    class EmptyDefault(BaseModel):
        kind: str = ""

    with pytest.raises(ValueError, match="Two.kind must be a single non-empty string Literal"):
        TaggedUnion(PriceChange, Two)
    with pytest.raises(ValueError, match="Empty.kind must be a single non-empty string Literal"):
        TaggedUnion(PriceChange, Empty)
    with pytest.raises(ValueError, match="Plain.kind must be a string Literal or have a non-empty string default"):
        TaggedUnion(PriceChange, Plain)
    with pytest.raises(ValueError, match="EmptyDefault.kind must be a string Literal or have a non-empty string default"):
        TaggedUnion(PriceChange, EmptyDefault)


def test_duplicate_values() -> None:
    class Other(BaseModel):
        kind: str = "price_change"

    with pytest.raises(ValueError, match="duplicate discriminator value `price_change` for PriceChange and Other"):
        TaggedUnion(PriceChange, Other)
