"""Shared fixtures of the Python facade suites.

Tests are plain synchronous functions (coroutines are driven with ``asyncio.run``),
as in the suites of existing users (API.md §11). Warnings are errors
(``filterwarnings = error`` in ``bindings/pyproject.toml``, repeated here so the
suites behave the same whichever rootdir pytest picks).
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("filterwarnings", "error")


@pytest.fixture
def providers() -> dict[str, dict[str, str]]:
    return {"anthropic": {"apiKeyEnv": "ANTHROPIC_API_KEY"}}
