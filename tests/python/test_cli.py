from __future__ import annotations

import importlib

import pytest

from flowai_harness import _cli


def test_cli_delegates_to_native_or_exits_with_usage_code(capsys: pytest.CaptureFixture[str]) -> None:
    internal = importlib.import_module("flowai_harness._internal")
    if hasattr(internal, "cli_main"):
        pytest.skip("the native command line exists; its behaviour is tested with the CLI")
    assert _cli.main(["runs", "store.redb"]) == 2
    assert "cli_main" in capsys.readouterr().err


def test_cli_passes_arguments_through(monkeypatch: pytest.MonkeyPatch) -> None:
    internal = importlib.import_module("flowai_harness._internal")
    seen: list[list[str]] = []

    def cli_main(args: list[str]) -> int:
        seen.append(args)
        return 3

    monkeypatch.setattr(internal, "cli_main", cli_main, raising=False)
    assert _cli.main(["show", "s.redb", "RUN"]) == 3
    monkeypatch.setattr("sys.argv", ["flowai", "gc", "s.redb"])
    assert _cli.main() == 3
    assert seen == [["show", "s.redb", "RUN"], ["gc", "s.redb"]]
