"""Tenant identity: the isolation key of all runtime state (API.md §1.3)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field

from ._model import SpecModel

__all__ = ["TenantIdentity", "define_tenant"]


class TenantIdentity(SpecModel):
    """Who a runtime serves (``resourceId``) and which version of their setup it runs."""

    resource_id: str = Field(min_length=1)
    version: str = Field(min_length=1)


def define_tenant(
    tenant: Any = None,
    /,
    version: str | None = None,
    *,
    resource_id: str | None = None,
    **kwargs: Any,
) -> TenantIdentity:
    """Build a :class:`TenantIdentity` from an id, a mapping or another identity, plus overrides."""
    data: dict[str, Any]
    if tenant is None:
        data = {}
    elif isinstance(tenant, TenantIdentity):
        data = tenant.model_dump(by_alias=True)
    elif isinstance(tenant, Mapping):
        data = dict(tenant)
    else:
        data = {"resource_id": tenant}
    if resource_id is not None:
        data["resource_id"] = resource_id
    if version is not None:
        data["version"] = version
    data.update(kwargs)
    # The snake_case spelling is the caller's latest word, so it replaces a camelCase
    # id copied from the input mapping.
    if "resource_id" in data:
        data["resourceId"] = data.pop("resource_id")
    return TenantIdentity.model_validate(data)
