from __future__ import annotations

from typing import Any, Literal, Optional, Union

import pytest
from pydantic import BaseModel, ValidationError

from flowai_harness import define_plan, define_tool, normalize_schema


class Product(BaseModel):
    sku: str
    price: float


class TreeNode(BaseModel):
    value: int
    children: list[TreeNode] = []


class Basket(BaseModel):
    items: list[Product]
    owner: Optional[str] = None  # noqa: UP045 - the Optional spelling is what users write


def test_type_map_scalars_and_required_order() -> None:
    assert normalize_schema({"query": str, "limit": int, "ratio": float, "exact": bool}) == {
        "type": "object",
        "properties": {
            "query": {"type": "string"},
            "limit": {"type": "integer"},
            "ratio": {"type": "number"},
            "exact": {"type": "boolean"},
        },
        "required": ["query", "limit", "ratio", "exact"],
    }


def test_empty_type_map_has_no_required() -> None:
    assert normalize_schema({}) == {"type": "object", "properties": {}}


def test_type_map_containers_and_optionals() -> None:
    schema = normalize_schema(
        {
            "meta": dict,
            "labels": dict[str, str],
            "anything": list,
            "names": list[str],
            "matrix": list[list[int]],
            "maybe": Optional[int],  # noqa: UP045
            "maybe_too": str | None,
        }
    )
    assert schema["properties"] == {
        "meta": {"type": "object"},
        "labels": {"type": "object"},
        "anything": {"type": "array", "items": {}},
        "names": {"type": "array", "items": {"type": "string"}},
        "matrix": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
        "maybe": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        "maybe_too": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    }
    assert schema["required"] == ["meta", "labels", "anything", "names", "matrix", "maybe", "maybe_too"]


def test_type_map_nested_dict_recurses() -> None:
    schema = normalize_schema({"filters": {"category": str}, "raw": {"type": "string"}})
    assert schema["properties"]["filters"] == {
        "type": "object",
        "properties": {"category": {"type": "string"}},
        "required": ["category"],
    }
    assert schema["properties"]["raw"] == {"type": "string"}


def test_type_map_other_hints_use_type_adapter_inlined() -> None:
    schema = normalize_schema({"product": Product, "mode": Literal["a", "b"]})
    product = schema["properties"]["product"]
    assert product["properties"]["sku"] == {"title": "Sku", "type": "string"}
    assert "$defs" not in product and "$ref" not in str(product)
    assert schema["properties"]["mode"] == {"enum": ["a", "b"], "type": "string"}


def test_type_map_unschematizable_hint_is_object() -> None:
    class Opaque:
        pass

    assert normalize_schema({"thing": Opaque})["properties"]["thing"] == {"type": "object"}


def test_description_only_dict_is_a_type_map() -> None:
    assert normalize_schema({"description": str}) == {
        "type": "object",
        "properties": {"description": {"type": "string"}},
        "required": ["description"],
    }


def test_type_map_keys_must_be_strings() -> None:
    with pytest.raises(TypeError, match="schema type-map keys must be strings"):
        normalize_schema({1: str})


@pytest.mark.parametrize("marker", ["$schema", "properties", "$ref", "type"])
def test_json_schema_markers(marker: str) -> None:
    values: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "properties": {},
        "$ref": "#/somewhere",
        "type": "object",
    }
    schema = {marker: values[marker], "description": "kept"}
    assert normalize_schema(schema) == schema


def test_json_schema_is_deep_copied() -> None:
    original = {"type": "object", "properties": {"a": {"type": "string"}}}
    result = normalize_schema(original)
    result["properties"]["a"]["type"] = "integer"
    assert original["properties"]["a"]["type"] == "string"


def test_json_schema_type_list_accepted() -> None:
    assert normalize_schema({"type": ["string", "null"]}) == {"type": ["string", "null"]}


@pytest.mark.parametrize("bad", [1, None, {"x": 1}, ["string", 2]])
def test_json_schema_type_checked(bad: Any) -> None:
    with pytest.raises(ValueError, match="schema.type must be a string or list of strings"):
        normalize_schema({"type": bad})


def test_json_schema_properties_checked() -> None:
    with pytest.raises(ValueError, match="schema.properties must be an object"):
        normalize_schema({"type": "object", "properties": ["a"]})


def test_json_schema_defs_inlined() -> None:
    schema = {
        "type": "object",
        "properties": {"p": {"$ref": "#/$defs/P"}, "ps": {"type": "array", "items": {"$ref": "#/$defs/P"}}},
        "$defs": {"P": {"type": "object", "properties": {"q": {"$ref": "#/$defs/Q"}}}, "Q": {"type": "string"}},
    }
    assert normalize_schema(schema) == {
        "type": "object",
        "properties": {
            "p": {"type": "object", "properties": {"q": {"type": "string"}}},
            "ps": {"type": "array", "items": {"type": "object", "properties": {"q": {"type": "string"}}}},
        },
    }


def test_model_class_keeps_pydantic_titles() -> None:
    assert normalize_schema(Product) == {
        "properties": {"sku": {"title": "Sku", "type": "string"}, "price": {"title": "Price", "type": "number"}},
        "required": ["sku", "price"],
        "title": "Product",
        "type": "object",
    }


def test_model_refs_are_inlined() -> None:
    schema = normalize_schema(Basket)
    assert "$defs" not in schema
    assert schema["properties"]["items"]["items"]["title"] == "Product"
    assert schema["properties"]["items"]["items"]["properties"]["sku"] == {"title": "Sku", "type": "string"}


def test_recursive_model_keeps_defs() -> None:
    schema = normalize_schema(TreeNode)
    assert "$defs" in schema
    assert schema["properties"]["children"]["items"] == {"$ref": "#/$defs/TreeNode"}
    assert schema["title"] == "TreeNode"


def test_top_level_optional_int_exact() -> None:
    assert normalize_schema(Optional[int]) == {"anyOf": [{"type": "integer"}, {"type": "null"}]}  # noqa: UP045


def test_top_level_other_types() -> None:
    assert normalize_schema(list[str]) == {"items": {"type": "string"}, "type": "array"}
    union = normalize_schema(Union[int, str])  # noqa: UP007
    assert union == {"anyOf": [{"type": "integer"}, {"type": "string"}]}


def test_unsupported_schema_input() -> None:
    class Opaque:
        pass

    with pytest.raises(TypeError, match="unsupported schema input"):
        normalize_schema(Opaque())


def test_schema_errors_surface_through_models() -> None:
    with pytest.raises(ValidationError, match="schema.type must be a string or list of strings"):
        define_tool("t", {"type": 3})
    with pytest.raises(ValidationError, match="schema.properties must be an object"):
        define_plan("p", {"properties": 3})
    with pytest.raises(TypeError, match="unsupported schema input"):
        define_plan("p", object())
