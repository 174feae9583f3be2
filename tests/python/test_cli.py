from __future__ import annotations

import asyncio
import importlib
import json
from pathlib import Path

import pytest

from flowai_harness import _cli, create_runtime, define_runtime, define_specialist, define_tenant


def test_the_flowai_command_reads_a_store(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "runs.redb"
    spec = define_runtime(
        define_tenant("acme", "v1"),
        agents=[define_specialist("solo", model="claude-sonnet-4-6", prompt="You help.")],
        providers={"anthropic": {"apiKey": "unused"}},
    )
    runtime = create_runtime(spec, store=str(path))

    async def drive() -> str:
        stream = runtime.run_specialist("solo", "hello")
        async for _ in stream:
            pass
        return str(stream.run_id)

    run_id = asyncio.run(drive())
    runtime.close()
    assert _cli.main(["runs", str(path), "--json"]) == 0
    listed = [json.loads(line) for line in capfd.readouterr().out.splitlines()]
    assert [r["runId"] for r in listed] == [run_id]
    assert listed[0]["status"] == "completed"
    assert _cli.main(["verify", str(path)]) == 0
    capfd.readouterr()
    assert _cli.main(["show", str(path), "01ARZ3NDEKTSV4RRFFQ69G5FAV"]) == 2
    assert _cli.main(["runs", str(tmp_path / "missing.redb")]) == 3
    assert _cli.main(["check", str(path)]) == 0
    assert capfd.readouterr().out.startswith("ok: 1 runs, ")

    # Beside a runtime of this process that holds the store: gc leaves it open for the
    # runtime, check refuses.
    held = create_runtime(spec, store=str(path))
    assert _cli.main(["gc", str(path)]) == 0
    assert _cli.main(["check", str(path)]) == 3
    assert "this process has it open" in capfd.readouterr().err
    assert held.run(run_id)["status"] == "completed"
    held.close()


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
