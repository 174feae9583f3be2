"""The ``_internal.pyi`` stub matches the native module that is actually built."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

import flowai_harness
from flowai_harness.errors import FlowAIValueError

STUB = Path(flowai_harness.__file__).with_name("_internal.pyi")


def stub_functions() -> dict[str, ast.FunctionDef]:
    tree = ast.parse(STUB.read_text(encoding="utf-8"))
    return {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}


def test_stub_names_exist_natively_with_matching_parameters() -> None:
    internal = importlib.import_module("flowai_harness._internal")
    functions = stub_functions()
    assert functions, "the stub declares the native functions"
    for name, node in functions.items():
        native = getattr(internal, name, None)
        assert callable(native), name
        expected = [arg.arg for arg in node.args.args + node.args.kwonlyargs]
        assert list(inspect.signature(native).parameters) == expected, name


def test_every_public_native_function_is_in_the_stub() -> None:
    internal = importlib.import_module("flowai_harness._internal")
    public = {name for name in dir(internal) if not name.startswith("_") and callable(getattr(internal, name))}
    declared = set(stub_functions())
    tree = ast.parse(STUB.read_text(encoding="utf-8"))
    declared |= {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    assert public <= declared


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
def test_mypy_stubtest(tmp_path: Path) -> None:
    # Run from a scratch directory: the installed package is checked and mypy's cache stays out of the tree.
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "flowai_harness._internal"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_native_errors_map_to_flowai_value_error() -> None:
    internal = importlib.import_module("flowai_harness._internal")
    agent = json.dumps({"name": "a", "role": "specialist", "model": {"id": "m"}, "systemPrompt": "p"})
    with pytest.raises(FlowAIValueError, match="unknown toolkit id: nope"):
        internal.describe_toolkit_tools(json.dumps({"id": "nope"}), agent)
    with pytest.raises(FlowAIValueError, match="invalid"):
        internal.describe_toolkit_tools("not json", agent)


def test_native_rows_shape() -> None:
    internal = importlib.import_module("flowai_harness._internal")
    agent = json.dumps({"name": "a", "role": "planner", "model": {"id": "m"}, "systemPrompt": "p"})
    rows = json.loads(internal.describe_role_default_tools(agent))
    assert [row["name"] for row in rows] == ["storePlan", "getPlan"]
    for row in rows:
        assert set(row) == {"name", "description", "input_schema"}
        assert row["input_schema"]["type"] == "object"


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
def test_package_typechecks_strictly(tmp_path: Path) -> None:
    package_dir = Path(flowai_harness.__file__).parent
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"), "-p", "flowai_harness"],
        capture_output=True,
        text=True,
        check=False,
        cwd=package_dir.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
