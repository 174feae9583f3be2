"""Argument handling of the runtime's reference methods (API.md §6, Python host API)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, Field

from flowai_harness import define_reference
from flowai_harness._references import prepare_reference_create, reference_handle


class ProductSet(BaseModel):
    product_ids: list[str] = Field(alias="productIds")


def test_kind_string() -> None:
    assert prepare_reference_create("ProductSet", {"a": 1}) == ("ProductSet", '{"a": 1}', "{}")
    with pytest.raises(ValueError, match="reference kind must not be empty"):
        prepare_reference_create("", {})


def test_spec_or_mapping_name() -> None:
    spec = define_reference("ProductSet", {"type": "object"})
    assert prepare_reference_create(spec, [1])[0] == "ProductSet"
    assert prepare_reference_create({"name": "ProductSet"}, [1])[0] == "ProductSet"
    with pytest.raises(ValueError, match="reference kind must not be empty"):
        prepare_reference_create({"name": ""}, [1])
    with pytest.raises(ValueError, match="string `name`"):
        prepare_reference_create(3, [1])


def test_pydantic_value_dumped_by_field_name() -> None:
    value = ProductSet(productIds=["p-1"])
    _, value_json, _ = prepare_reference_create("ProductSet", value)
    assert json.loads(value_json) == {"product_ids": ["p-1"]}


def test_spec_glimpse_called_once_with_original_value() -> None:
    seen: list[Any] = []

    def glimpse(value: ProductSet) -> dict[str, int]:
        seen.append(value)
        return {"count": len(value.product_ids)}

    spec = define_reference("ProductSet", ProductSet, glimpse=glimpse)
    value = ProductSet(productIds=["a", "b"])
    assert prepare_reference_create(spec, value)[2] == '{"count": 2}'
    assert seen == [value] and seen[0] is value


def test_explicit_glimpse_wins() -> None:
    def never(value: Any) -> Any:
        raise AssertionError("the spec's glimpse must not run")

    spec = define_reference("K", {"type": "object"}, glimpse=never)
    assert prepare_reference_create(spec, {}, glimpse={"mine": True})[2] == '{"mine": true}'


def test_non_callable_glimpse_attribute() -> None:
    class Spec:
        name = "K"
        glimpse = "not callable"

    with pytest.raises(ValueError, match="ReferenceSpec.glimpse must be callable or None"):
        prepare_reference_create(Spec(), {})


def test_glimpse_exception_propagates() -> None:
    def broken(value: Any) -> Any:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        prepare_reference_create(define_reference("K", {"type": "object"}, glimpse=broken), {})


def test_unserializable_value() -> None:
    with pytest.raises(TypeError):
        prepare_reference_create("K", {"x": object()})


def test_reference_handle() -> None:
    assert reference_handle({"kind": "K", "id": "abc"}) == ("K", "abc")

    class Handle:
        kind = "K"
        id = "abc"

    assert reference_handle(Handle()) == ("K", "abc")
    with pytest.raises(ValueError, match="reference must provide string field 'kind'"):
        reference_handle({"id": "abc"})
    with pytest.raises(ValueError, match="kind must not be empty"):
        reference_handle({"kind": "", "id": "abc"})
    with pytest.raises(ValueError, match="reference must provide string field 'id'"):
        reference_handle({"kind": "K", "id": 3})
    with pytest.raises(ValueError, match="id must not be empty"):
        reference_handle({"kind": "K", "id": ""})
