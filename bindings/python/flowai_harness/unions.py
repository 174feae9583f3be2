"""Discriminated unions of Pydantic models, e.g. for plan actions (API.md §1.16)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, Field, create_model

__all__ = ["TaggedUnion"]


def TaggedUnion(*models: type[BaseModel], discriminator: str = "kind") -> Any:  # noqa: N802 - public name
    """``Annotated[A | B | ..., Field(discriminator=...)]`` over models tagged by ``discriminator``.

    A variant declares its tag as ``kind: Literal["x"]`` or, as a shorthand, as a string
    default ``kind: str = "x"``; shorthand variants are replaced by a subclass whose tag
    is a required ``Literal``, so the JSON schema lists the tag as required.
    """
    if len(models) < 2:
        raise ValueError("TaggedUnion requires at least two Pydantic models")
    for model in models:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError("TaggedUnion variants must be Pydantic BaseModel classes")

    variants: list[type[BaseModel]] = []
    owners: dict[str, type[BaseModel]] = {}
    for model in models:
        tag, shorthand = _tag_of(model, discriminator)
        if tag in owners:
            raise ValueError(
                f"duplicate discriminator value `{tag}` for {owners[tag].__name__} and {model.__name__}"
            )
        owners[tag] = model
        variants.append(_with_literal_tag(model, discriminator, tag) if shorthand else model)

    union: Any = Union[tuple(variants)]  # noqa: UP007 - the arms are only known at run time
    return Annotated[union, Field(discriminator=discriminator)]


def _tag_of(model: type[BaseModel], discriminator: str) -> tuple[str, bool]:
    """The variant's tag, and whether it came from a plain string default (shorthand)."""
    field = model.model_fields.get(discriminator)
    if field is None:
        raise ValueError(f"{model.__name__} is missing discriminator field `{discriminator}`")
    annotation = field.annotation
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) is Literal:
        values = get_args(annotation)
        if len(values) == 1 and isinstance(values[0], str) and values[0]:
            return values[0], False
        raise ValueError(f"{model.__name__}.{discriminator} must be a single non-empty string Literal")
    default = field.default
    if isinstance(default, str) and default:
        return default, True
    raise ValueError(
        f"{model.__name__}.{discriminator} must be a string Literal or have a non-empty string default"
    )


def _with_literal_tag(model: type[BaseModel], discriminator: str, tag: str) -> type[BaseModel]:
    # A subclass keeps isinstance checks against the user's class working.
    field_definitions: Any = {discriminator: (Literal[tag], ...)}
    variant: type[BaseModel] = create_model(
        model.__name__,
        __base__=model,
        __module__=model.__module__,
        **field_definitions,
    )
    variant.__qualname__ = model.__qualname__
    return variant
