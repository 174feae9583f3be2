"""Layered system prompts and their "# Tools" table (API.md §1.15).

A prompt's cache key is the sha256 of its text, so anything that changes the text
(a new tool row, a different toolkit config) changes the key, and dict insertion
order never does (structured sections are dumped with sorted keys).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel

from .tools import ToolSpec

__all__ = ["LayeredPrompt", "augment_prompt_tools", "layered_prompt"]

ToolRow = tuple[str, str, str]

_TOOLS_HEADING = "# Tools"
# A new "# Tools" section goes right after the last of these that a prompt has.
_LEADING_HEADINGS = ("# Identity", "# Communication", "# Operational Rules")
_TABLE_HEADER = "| Tool | Description | Approval |\n| --- | --- | --- |"


@dataclass(frozen=True)
class LayeredPrompt:
    """A system prompt text and the cache key derived from it."""

    text: str
    cache_key: str

    def __str__(self) -> str:
        return self.text


def _prompt(text: str) -> LayeredPrompt:
    return LayeredPrompt(text=text, cache_key=hashlib.sha256(text.encode("utf-8")).hexdigest())


def layered_prompt(
    *,
    identity: Any,
    communication: Any = None,
    operational_rules: Any = None,
    tools: Any = None,
    domain_knowledge: Any = None,
    safety: Any = None,
    output_format: Any = None,
    examples: Any = None,
) -> LayeredPrompt:
    """Render the given sections, in their fixed order, as one system prompt."""
    sections = [
        _section("Identity", _text_body("identity", identity)),
        _section("Communication", _text_body("communication", communication)),
        _section("Operational Rules", _text_body("operational_rules", operational_rules)),
        _section("Tools", _tools_body(tools)),
        _section("Domain Knowledge", _structured_body("domain_knowledge", domain_knowledge)),
        _section("Safety", _text_body("safety", safety)),
        _section("Output Format", _structured_body("output_format", output_format)),
        _section("Examples", _structured_body("examples", examples)),
    ]
    return _prompt("\n\n".join(section for section in sections if section))


def _section(heading: str, body: str) -> str:
    return f"# {heading}\n{body}" if body else ""


def _text_body(param: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, Sequence) and all(isinstance(item, str) for item in value):
        return "\n".join(f"- {item}" for item in value)
    raise TypeError(f"{param} must be a string or a sequence of strings")


def _structured_body(param: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    converted = _structured_value(param, value)
    if converted in ({}, []):
        return ""
    dumped = json.dumps(converted, ensure_ascii=False, sort_keys=True, indent=2)
    return "```json\n" + dumped + "\n```"


def _structured_value(param: str, value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{param} contains a non-finite float")
        return value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True, mode="json")
    if isinstance(value, Mapping):
        result: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{param} mapping keys must be strings")
            result[key] = _structured_value(param, item)
        return result
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        return [_structured_value(param, item) for item in value]
    raise TypeError(f"{param} contains unsupported value {value!r}")


def _tools_body(tools: Any) -> str:
    if tools is None:
        return ""
    return _render_table(_merge_rows([], _tool_rows(tools)))


def _tool_rows(tools: Iterable[Any]) -> list[ToolRow]:
    rows: list[ToolRow] = []
    for tool in tools:
        if isinstance(tool, ToolSpec):
            rows.append((tool.name, tool.description, _approval_label(tool.approval)))
        elif isinstance(tool, str):
            rows.append((tool, "", ""))
        elif isinstance(tool, Mapping):
            rows.append(
                (
                    str(tool.get("name", "")),
                    str(tool.get("description", "")),
                    _approval_label(tool.get("approval", "")),
                )
            )
        else:
            raise TypeError(f"tool rows must be ToolSpec, str or mapping entries, got {tool!r}")
    return rows


def _approval_label(approval: Any) -> str:
    if approval is None or approval == "":
        return ""
    if isinstance(approval, str):
        return approval
    if isinstance(approval, Mapping) and isinstance(approval.get("kind"), str):
        return str(approval["kind"])
    raise TypeError("tool approval must be a string or a mapping with a string `kind`")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\r\n", " ").replace("\n", " ").replace("\r", " ").strip()


def _merge_rows(existing: list[ToolRow], additions: list[ToolRow]) -> list[ToolRow]:
    """Rows keyed by stripped name, the first occurrence winning, sorted by name."""
    merged: dict[str, ToolRow] = {}
    for name, description, approval in [*existing, *additions]:
        key = name.strip()
        if key not in merged:
            merged[key] = (key, description, approval)
    return [merged[key] for key in sorted(merged)]


def _render_table(rows: list[ToolRow]) -> str:
    if not rows:
        return ""
    lines = [_TABLE_HEADER]
    lines.extend(f"| {_cell(name)} | {_cell(description)} | {_cell(approval)} |" for name, description, approval in rows)
    return "\n".join(lines)


def augment_prompt_tools(text: str, tools: Iterable[Any]) -> LayeredPrompt:
    """Merge tool rows into the prompt's "# Tools" table (rows already there win), or add one."""
    additions = _tool_rows(tools)
    if not additions:
        return _prompt(text)
    sections = _split_sections(text)
    for index, section in enumerate(sections):
        if _first_line(section) == _TOOLS_HEADING:
            existing = _parse_table_rows(section)
            sections[index] = f"{_TOOLS_HEADING}\n{_render_table(_merge_rows(existing, additions))}"
            return _prompt("\n\n".join(sections))
    new_section = f"{_TOOLS_HEADING}\n{_render_table(_merge_rows([], additions))}"
    if not any(section.startswith("# ") for section in sections):
        sections.append(new_section)
    else:
        position = 0
        for index, section in enumerate(sections):
            if _first_line(section) in _LEADING_HEADINGS:
                position = index + 1
        sections.insert(position, new_section)
    return _prompt("\n\n".join(sections))


def _first_line(section: str) -> str:
    return section.split("\n", 1)[0].strip()


def _split_sections(text: str) -> list[str]:
    sections: list[list[str]] = [[]]
    for line in text.split("\n"):
        if line.startswith("# ") and sections[-1]:
            sections.append([])
        sections[-1].append(line)
    stripped = ("\n".join(lines).strip() for lines in sections)
    return [section for section in stripped if section]


def _parse_table_rows(section: str) -> list[ToolRow]:
    rows: list[ToolRow] = []
    for raw in section.split("\n")[1:]:
        line = raw.strip()
        if len(line) < 2 or not (line.startswith("|") and line.endswith("|")):
            continue
        cells = _split_cells(line)
        if len(cells) < 3:
            continue
        if cells[0] == "Tool":
            continue
        if all(cell and set(cell) <= {"-", ":"} and "-" in cell for cell in cells):
            continue
        rows.append((cells[0], cells[1], cells[2]))
    return rows


def _split_cells(line: str) -> list[str]:
    """Cells of a ``| a | b |`` row; ``\\|`` is a literal pipe inside a cell."""
    cells: list[str] = []
    current: list[str] = []
    index = 1  # skip the leading pipe
    end = len(line) - 1  # and the trailing one
    while index < end:
        char = line[index]
        if char == "\\" and index + 1 < len(line) and line[index + 1] == "|":
            current.append("|")
            index += 2
            continue
        if char == "|":
            cells.append("".join(current).strip())
            current = []
        else:
            current.append(char)
        index += 1
    cells.append("".join(current).strip())
    return cells
