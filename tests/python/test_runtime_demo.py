"""The README demo (examples/demo.py) runs: two processes, a crash at the plan gate,
the approval and the resume in the second one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.py"


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    store = tmp_path / "demo.redb"
    result = subprocess.run([sys.executable, str(DEMO), str(store)], capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "exiting without closing, like a crash" in out
    assert "is suspended; approving" in out
    # The lookup recorded by the first process is not called again by the second.
    assert out.count("[host] lookup_prices") == 1
    assert out.count("[host] dispatching 2 action(s)") == 1
    assert "completed" in out and "plan price-plan-1: executing -> executed" in out
    assert "status       completed" in out
