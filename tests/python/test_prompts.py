from __future__ import annotations

import hashlib
import itertools
import json
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel, Field

from flowai_harness import LayeredPrompt, define_tool, layered_prompt
from flowai_harness.prompts import augment_prompt_tools

HEADER = "| Tool | Description | Approval |\n| --- | --- | --- |"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_layered_prompt_value_semantics() -> None:
    prompt = layered_prompt(identity="  You are a specialist.  ")
    assert prompt.text == "# Identity\nYou are a specialist."
    assert str(prompt) == prompt.text
    assert prompt.cache_key == sha(prompt.text)
    assert prompt == LayeredPrompt(text=prompt.text, cache_key=prompt.cache_key)
    with pytest.raises(AttributeError):
        prompt.text = "x"  # type: ignore[misc]


def test_layered_prompt_is_keyword_only_and_identity_required() -> None:
    with pytest.raises(TypeError):
        layered_prompt("x")  # type: ignore[misc]
    with pytest.raises(TypeError):
        layered_prompt()  # type: ignore[call-arg]


def test_section_order_and_rendering() -> None:
    prompt = layered_prompt(
        examples=[{"q": "a"}],
        output_format="Answer in JSON.",
        safety=["Never guess.", "Cite sources."],
        domain_knowledge={"b": 1, "a": [1.5, None, True]},
        tools=["search"],
        operational_rules="Be brief.",
        communication=("Polite.",),
        identity="You are a specialist.",
    )
    assert prompt.text == (
        "# Identity\nYou are a specialist.\n\n"
        "# Communication\n- Polite.\n\n"
        "# Operational Rules\nBe brief.\n\n"
        f"# Tools\n{HEADER}\n| search |  |  |\n\n"
        '# Domain Knowledge\n```json\n{\n  "a": [\n    1.5,\n    null,\n    true\n  ],\n  "b": 1\n}\n```\n\n'
        "# Safety\n- Never guess.\n- Cite sources.\n\n"
        "# Output Format\nAnswer in JSON.\n\n"
        '# Examples\n```json\n[\n  {\n    "q": "a"\n  }\n]\n```'
    )


def test_empty_and_none_sections_omitted() -> None:
    prompt = layered_prompt(identity="I", communication="   ", operational_rules=[], tools=[], safety=None, examples=None)
    assert prompt.text == "# Identity\nI"


@pytest.mark.parametrize("param", ["identity", "communication", "operational_rules", "safety"])
def test_text_section_type_errors(param: str) -> None:
    kwargs: dict[str, Any] = {"identity": "I", param: {"not": "text"}}
    with pytest.raises(TypeError, match=f"{param} must be a string or a sequence of strings"):
        layered_prompt(**kwargs)
    kwargs[param] = ["ok", 3]
    with pytest.raises(TypeError, match=f"{param} must be a string or a sequence of strings"):
        layered_prompt(**kwargs)


class Rule(BaseModel):
    rule_name: str = Field(alias="ruleName")
    limit: Decimal


def test_structured_conversion() -> None:
    prompt = layered_prompt(
        identity="I",
        domain_knowledge={
            "price": Decimal("9.99"),
            "day": date(2026, 5, 15),
            "at": datetime(2026, 5, 15, 8, 0),
            "rule": Rule(ruleName="max", limit=Decimal("3")),
            "pair": ("a", 1),
            "text": "ü",
        },
    )
    body = prompt.text.split("# Domain Knowledge\n", 1)[1]
    assert body.startswith("```json\n") and body.endswith("\n```")
    assert json.loads(body[len("```json\n") : -len("\n```")]) == {
        "price": "9.99",
        "day": "2026-05-15",
        "at": "2026-05-15T08:00:00",
        "rule": {"ruleName": "max", "limit": "3"},
        "pair": ["a", 1],
        "text": "ü",
    }
    assert '"ü"' in body  # ensure_ascii=False


def test_structured_string_is_stripped() -> None:
    assert layered_prompt(identity="I", examples="  e.g. this  ").text == "# Identity\nI\n\n# Examples\ne.g. this"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"x": float("nan")}, "domain_knowledge contains a non-finite float"),
        ([float("inf")], "domain_knowledge contains a non-finite float"),
        ({1: "a"}, "domain_knowledge mapping keys must be strings"),
        ({"s": {1, 2}}, "domain_knowledge contains unsupported value {1, 2}"),
        ({1, 2}, "domain_knowledge contains unsupported value"),
    ],
)
def test_structured_errors(value: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message.replace("{", r"\{").replace("}", r"\}")):
        layered_prompt(identity="I", domain_knowledge=value)


def test_structured_cache_key_independent_of_insertion_order() -> None:
    items = [("a", 1), ("b", {"y": 2, "x": 1}), ("c", [3])]
    keys = {layered_prompt(identity="I", domain_knowledge=dict(order)).cache_key for order in itertools.permutations(items)}
    assert len(keys) == 1


def test_tools_table_rows() -> None:
    tool = define_tool("search_products", {"q": str}, "Search products by query.", approval="always")
    prompt = layered_prompt(
        identity="I",
        tools=[
            tool,
            "alpha",
            {"name": "beta", "description": "Has a | pipe\nand newline", "approval": {"kind": "dynamic", "value": "p"}},
            {"name": " alpha ", "description": "duplicate loses"},
            {"name": "gamma", "approval": "runtime"},
        ],
    )
    assert prompt.text == (
        "# Identity\nI\n\n# Tools\n"
        f"{HEADER}\n"
        "| alpha |  |  |\n"
        "| beta | Has a \\| pipe and newline | dynamic |\n"
        "| gamma |  | runtime |\n"
        "| search_products | Search products by query. | always |"
    )


def test_tools_bad_approval_label() -> None:
    with pytest.raises(TypeError, match="tool approval must be a string or a mapping with a string `kind`"):
        layered_prompt(identity="I", tools=[{"name": "x", "approval": {"kind": 3}}])
    with pytest.raises(TypeError, match="tool approval must be a string or a mapping with a string `kind`"):
        layered_prompt(identity="I", tools=[{"name": "x", "approval": 5}])


# --------------------------------------------------------------------------- augment_prompt_tools


def test_augment_raw_prompt_exact() -> None:
    result = augment_prompt_tools(
        "You are a specialist.", [{"name": "search_catalog", "description": "Search catalog entities."}]
    )
    assert result.text == (
        "You are a specialist.\n\n# Tools\n| Tool | Description | Approval |\n| --- | --- | --- |\n"
        "| search_catalog | Search catalog entities. |  |"
    )
    assert result.cache_key == sha(result.text)


def test_augment_without_additions_keeps_text() -> None:
    result = augment_prompt_tools("  Same text. ", [])
    assert result == LayeredPrompt(text="  Same text. ", cache_key=sha("  Same text. "))


def test_augment_merges_existing_table_existing_wins() -> None:
    base = layered_prompt(
        identity="I",
        tools=[{"name": "search", "description": "Mine | custom", "approval": "always"}],
        safety="S",
    )
    result = augment_prompt_tools(
        base.text,
        [{"name": "search", "description": "Toolkit version", "approval": "runtime"}, {"name": "alpha", "description": "A"}],
    )
    assert result.text == (
        "# Identity\nI\n\n# Tools\n"
        f"{HEADER}\n| alpha | A |  |\n| search | Mine \\| custom | always |\n\n# Safety\nS"
    )
    assert result.text.count("| search |") == 1
    # Idempotent: the same additions again change nothing.
    again = augment_prompt_tools(result.text, [{"name": "search", "description": "other"}, {"name": "alpha"}])
    assert again == result


@pytest.mark.parametrize(
    ("text", "expected_order"),
    [
        ("# Identity\nI\n\n# Safety\nS", ["# Identity", "# Tools", "# Safety"]),
        ("# Identity\nI\n\n# Communication\nC\n\n# Examples\nE", ["# Identity", "# Communication", "# Tools", "# Examples"]),
        ("# Safety\nS\n\n# Operational Rules\nR\n# Examples\nE", ["# Safety", "# Operational Rules", "# Tools", "# Examples"]),
        ("# Safety\nS\n\n# Examples\nE", ["# Tools", "# Safety", "# Examples"]),
        # No leading heading exists: index 0, even before an untitled preamble.
        ("Preamble.\n# Safety\nS", ["# Tools", "Preamble.", "# Safety"]),
    ],
)
def test_augment_inserts_tools_section(text: str, expected_order: list[str]) -> None:
    result = augment_prompt_tools(text, ["t"])
    firsts = [section.split("\n", 1)[0] for section in result.text.split("\n\n")]
    assert firsts == expected_order


def test_augment_parses_table_with_escapes_and_separators() -> None:
    text = (
        "# Tools\n"
        "| Tool | Description | Approval |\n"
        "|:---|---:|:-:|\n"
        "| pipe | a \\| b | never | extra |\n"
        "| short | cells |\n"
        "not a row\n"
        "| other | o | always |"
    )
    result = augment_prompt_tools(text, ["new"])
    assert result.text == f"# Tools\n{HEADER}\n| new |  |  |\n| other | o | always |\n| pipe | a \\| b | never |"


def test_augment_accepts_tool_specs() -> None:
    tool = define_tool("search_products", {}, "Search products by query.", approval="always")
    assert augment_prompt_tools("P", [tool]).text.endswith("| search_products | Search products by query. | always |")
