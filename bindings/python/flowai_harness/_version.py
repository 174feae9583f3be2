"""The installed distribution's version."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__: str = version("flowai-harness")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
