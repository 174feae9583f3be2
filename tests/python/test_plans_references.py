from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from flowai_harness import PlanDisplayAlias, PlanSpec, ReferenceSpec, define_plan, define_reference


class ProductSet(BaseModel):
    skus: list[str]


def test_plan_dump() -> None:
    plan = define_plan("ScenarioPlan", {"type": "object"}, {"draft": "pending_approval"})
    assert plan.model_dump(by_alias=True, mode="json") == {
        "name": "ScenarioPlan",
        "schema": {"type": "object"},
        "displayAliases": [{"status": "draft", "alias": "pending_approval"}],
    }


def test_plan_defaults_and_keywords() -> None:
    plan = define_plan(name="P", schema={"type": "object"})
    assert plan.display_aliases == []
    assert plan.schema_ == {"type": "object"}
    assert PlanSpec(name="P", schema={"type": "object"}, display_aliases=None).display_aliases == []


def test_plan_display_aliases_as_iterable() -> None:
    plan = define_plan(
        "P",
        {"type": "object"},
        [PlanDisplayAlias(status="approved", alias="ok"), {"status": "failed", "alias": "broken"}],
    )
    assert [alias.model_dump() for alias in plan.display_aliases] == [
        {"status": "approved", "alias": "ok"},
        {"status": "failed", "alias": "broken"},
    ]


def test_plan_display_alias_model() -> None:
    assert PlanDisplayAlias(status="draft", alias="x").model_dump(by_alias=True) == {"status": "draft", "alias": "x"}
    with pytest.raises(ValidationError):
        PlanDisplayAlias(status="pending_approval", alias="x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "aliases",
    [{"pending_approval": "waiting"}, [{"status": "pending_approval", "alias": "waiting"}]],
)
def test_plan_unsupported_status(aliases: object) -> None:
    with pytest.raises(ValidationError) as info:
        define_plan("P", {"type": "object"}, aliases)
    text = str(info.value)
    assert "unsupported plan display status" in text
    assert "pending_approval" in text
    assert (
        "unsupported plan display status `pending_approval`; expected one of "
        "['approved', 'draft', 'executed', 'executing', 'failed']"
    ) in text


def test_plan_schema_from_model_and_round_trip() -> None:
    plan = define_plan("P", ProductSet)
    assert plan.schema_["title"] == "ProductSet"
    dumped = plan.model_dump(by_alias=True, mode="json")
    assert PlanSpec.model_validate(dumped).model_dump(by_alias=True, mode="json") == dumped


def test_reference_dump_excludes_glimpse() -> None:
    ref = define_reference("ProductSet", {"type": "object"}, ttl_ms=100, glimpse=lambda v: {"n": 1})
    assert ref.model_dump(by_alias=True, mode="json") == {"name": "ProductSet", "schema": {"type": "object"}, "ttlMs": 100}
    assert define_reference("R", {"type": "object"}).model_dump(by_alias=True, mode="json")["ttlMs"] is None


def test_reference_glimpse_is_callable_attribute() -> None:
    ref = define_reference("ProductSet", ProductSet, glimpse=lambda value: {"count": len(value.skus)})
    assert ref.glimpse is not None
    assert ref.glimpse(ProductSet(skus=["a", "b"])) == {"count": 2}


def test_reference_negative_ttl_mentions_snake_case_field() -> None:
    with pytest.raises(ValidationError) as info:
        define_reference("R", {"type": "object"}, ttl_ms=-1)
    assert "ttl_ms" in str(info.value)


def test_reference_alias_input_and_positional_helper() -> None:
    ref = ReferenceSpec.model_validate({"name": "R", "schema": {"type": "object"}, "ttlMs": 0})
    assert ref.ttl_ms == 0
    assert define_reference("R", {"type": "object"}, 5).ttl_ms == 5
    with pytest.raises(ValidationError):
        ReferenceSpec.model_validate({"name": "R", "schema": {"type": "object"}, "bogus": 1})
