"""Entry point of the ``flowai`` console script (API.md §9.6); the commands are native."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ._native import native_attr

# API.md §9.6: exit code 2 is "usage", which is what an unusable command amounts to.
_EXIT_UNAVAILABLE = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``flowai`` with ``argv`` (default: the process arguments); returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    cli_main = native_attr("cli_main")
    if cli_main is None:
        print(
            "flowai: this build of flowai-harness has no native command line "
            "(flowai_harness._internal.cli_main is missing); reinstall the package",
            file=sys.stderr,
        )
        return _EXIT_UNAVAILABLE
    return int(cli_main(args))


if __name__ == "__main__":
    sys.exit(main())
