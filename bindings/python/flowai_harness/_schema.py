"""Turning Python schema inputs into JSON Schema dicts (API.md §1.4)."""

from __future__ import annotations

import copy
import types
from collections.abc import Mapping
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter

__all__ = ["normalize_schema"]

# A dict with any of these keys is already JSON Schema; without them it is a type map
# such as {"query": str}. "description" alone is deliberately not a marker.
_SCHEMA_MARKERS = ("$schema", "properties", "$ref", "type")
_DEFS_PREFIX = "#/$defs/"


def normalize_schema(schema: Any) -> dict[str, Any]:
    """Return a JSON Schema dict for a schema dict, a type map, a model class or a type."""
    if isinstance(schema, dict):
        if any(marker in schema for marker in _SCHEMA_MARKERS):
            return _checked_json_schema(schema)
        return _type_map_schema(schema)
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return _inline_refs(schema.model_json_schema())
    try:
        generated = TypeAdapter(schema).json_schema()
    except Exception as exc:
        raise TypeError(f"unsupported schema input: {schema!r}") from exc
    return _inline_refs(generated)


def _checked_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(schema)
    if "type" in result:
        kind = result["type"]
        valid = isinstance(kind, str) or (
            isinstance(kind, list) and all(isinstance(item, str) for item in kind)
        )
        if not valid:
            raise ValueError("schema.type must be a string or list of strings")
    if "properties" in result and not isinstance(result["properties"], dict):
        raise ValueError("schema.properties must be an object")
    return _inline_refs(result)


def _type_map_schema(type_map: dict[Any, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for name, hint in type_map.items():
        if not isinstance(name, str):
            raise TypeError("schema type-map keys must be strings")
        properties[name] = _hint_schema(hint)
    result: dict[str, Any] = {"type": "object", "properties": properties}
    if properties:
        result["required"] = list(properties)
    return result


_SCALARS: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _hint_schema(hint: Any) -> dict[str, Any]:
    if isinstance(hint, dict):
        return normalize_schema(hint)
    if isinstance(hint, type) and hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    origin = get_origin(hint)
    if hint is dict or origin is dict:
        return {"type": "object"}
    if hint is list:
        return {"type": "array", "items": {}}
    if origin is list:
        args = get_args(hint)
        return {"type": "array", "items": _hint_schema(args[0]) if args else {}}
    if origin is Union or origin is types.UnionType:
        arms = get_args(hint)
        non_null = [arm for arm in arms if arm is not type(None)]
        if len(non_null) == 1 and len(arms) == 2:
            return {"anyOf": [_hint_schema(non_null[0]), {"type": "null"}]}
    try:
        return _inline_refs(TypeAdapter(hint).json_schema())
    except Exception:
        # The contract keeps type maps permissive: an unschematizable hint is "some object".
        return {"type": "object"}


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """Replace ``#/$defs/<Name>`` refs by their definitions; keep recursive ones as refs."""
    if "$defs" not in schema:
        return schema
    result = dict(schema)
    original_defs = result.pop("$defs")
    defs = original_defs if isinstance(original_defs, Mapping) else {}
    left_recursive = False

    def walk(node: Any, expanding: tuple[str, ...]) -> Any:
        nonlocal left_recursive
        if isinstance(node, list):
            return [walk(item, expanding) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_DEFS_PREFIX):
            name = ref[len(_DEFS_PREFIX) :]
            if name in expanding:
                left_recursive = True
                return dict(node)
            if name in defs:
                expanded = walk(defs[name], (*expanding, name))
                siblings = {key: walk(value, expanding) for key, value in node.items() if key != "$ref"}
                if not siblings:
                    return expanded
                merged = dict(expanded) if isinstance(expanded, dict) else {}
                merged.update(siblings)
                return merged
        return {key: walk(value, expanding) for key, value in node.items()}

    inlined: dict[str, Any] = walk(result, ())
    if left_recursive:
        inlined["$defs"] = original_defs
    return inlined
