from __future__ import annotations

import pytest
from pydantic import ValidationError

from flowai_harness import TenantIdentity, define_tenant


def test_positional_id_and_version() -> None:
    tenant = define_tenant("acme", "v1")
    assert tenant == TenantIdentity(resource_id="acme", version="v1")
    assert tenant.model_dump(by_alias=True, mode="json") == {"resourceId": "acme", "version": "v1"}


def test_keywords() -> None:
    tenant = define_tenant(resource_id="acme-corp", version="2026-05-15")
    assert tenant.resource_id == "acme-corp"
    assert tenant.version == "2026-05-15"


def test_resource_id_keyword_overrides_mapping() -> None:
    tenant = define_tenant({"resourceId": "old", "version": "v1"}, resource_id="acme")
    assert tenant.resource_id == "acme"
    assert tenant.version == "v1"


def test_copy_of_identity_with_new_version() -> None:
    original = define_tenant("acme", "v1")
    assert define_tenant(original, "v2") == TenantIdentity(resourceId="acme", version="v2")
    assert define_tenant(original) == original


def test_kwargs_merged_last_and_renamed() -> None:
    assert define_tenant(None, resource_id="a", version="v1").resource_id == "a"
    assert define_tenant("x", version="v1", resource_id="y").resource_id == "y"
    assert define_tenant({"resourceId": "m", "version": "v1"}, version="v9").version == "v9"
    assert define_tenant(version="v1", **{"resourceId": "kw"}).resource_id == "kw"


@pytest.mark.parametrize(
    ("args", "kwargs", "fragment"),
    [
        (("",), {"version": "v1"}, "resource"),
        ((), {"version": "v1"}, "resource"),
        (("acme", ""), {}, "version"),
        (("acme",), {}, "version"),
    ],
)
def test_empty_or_missing_fields(args: tuple[str, ...], kwargs: dict[str, str], fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        define_tenant(*args, **kwargs)
    text = str(info.value)
    assert fragment in text
    if fragment == "resource":
        assert "resourceId" in text or "resource_id" in text


def test_model_is_frozen_and_strict() -> None:
    tenant = define_tenant("acme", "v1")
    with pytest.raises(ValidationError):
        tenant.version = "v2"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        TenantIdentity.model_validate({"resourceId": "a", "version": "v", "extra": 1})
    assert TenantIdentity.model_validate({"resource_id": "a", "version": "v"}).resource_id == "a"
