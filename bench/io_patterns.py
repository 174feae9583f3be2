"""What one durable commit costs on this disk, by write pattern.

Why the store has a write-ahead log (storage/FORMAT.md): redb's copy-on-write commit of a
small record writes about eight 4 KiB pages at scattered offsets before its fdatasync,
while the log writes the same bytes in one sequential piece. This script times those
patterns next to the raw floor the benchmarks compare against, in one process:

    python bench/io_patterns.py [--ops 3000] [--dir target]

Each pattern runs three rounds of ``--ops`` operations; the median round is printed.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

PAGE = 4096
FRAME = 8 * PAGE + 64  # about one redb commit's pages plus a frame header
PREALLOCATED = 64 << 20


def timed(ops: int, op: Callable[[int], None]) -> float:
    """Median over three rounds, µs per operation."""
    rounds = []
    for _ in range(3):
        started = time.perf_counter()
        for i in range(ops):
            op(i)
        rounds.append((time.perf_counter() - started) / ops * 1e6)
    return statistics.median(rounds)


def open_new(path: Path, zeros: int = 0, fallocate: int = 0) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    if zeros:
        chunk = bytes(1 << 20)
        for _ in range(zeros // len(chunk)):
            os.write(fd, chunk)
    if fallocate:
        os.posix_fallocate(fd, 0, fallocate)
    os.fsync(fd)
    return fd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=3000)
    parser.add_argument("--dir", type=Path, default=Path("target"), help="on the disk to measure, not a tmpfs")
    options = parser.parse_args()
    options.dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    record, page, frame = b"r" * 1024, b"p" * PAGE, b"f" * FRAME

    with tempfile.TemporaryDirectory(dir=options.dir) as tmp:
        d = Path(tmp)
        results: list[tuple[str, float]] = []

        fd = open_new(d / "raw")
        results.append(("raw: 1 KB append + fdatasync (the benchmarks' floor)", timed(options.ops, lambda i: (os.write(fd, record), os.fdatasync(fd)))))

        fd = open_new(d / "scattered", zeros=PREALLOCATED)

        def scattered(_: int) -> None:
            for _ in range(8):
                os.pwrite(fd, page, rng.randrange(PREALLOCATED // PAGE) * PAGE)
            os.fdatasync(fd)

        results.append(("8 scattered 4 KiB writes + fdatasync (a redb commit's pattern)", timed(options.ops, scattered)))

        def sequential(fd: int, size: int) -> Callable[[int], None]:
            at = [0]

            def op(_: int) -> None:
                if at[0] + FRAME > size:
                    at[0] = 0
                os.pwrite(fd, frame, at[0])
                at[0] += FRAME
                os.fdatasync(fd)

            return op

        fd = open_new(d / "zeroed", zeros=8 << 20)
        results.append(("33 KB sequential into a zero-filled file + fdatasync (the log)", timed(options.ops, sequential(fd, 8 << 20))))
        # Large enough that no write lands on an extent an earlier write already converted.
        unwritten = 3 * options.ops * FRAME + PAGE
        fd = open_new(d / "fallocated", fallocate=unwritten)
        results.append(("33 KB sequential into a fallocated file + fdatasync", timed(options.ops, sequential(fd, unwritten))))
        fd = open_new(d / "growing")
        results.append(("33 KB append to a growing file + fdatasync", timed(options.ops, lambda i: (os.write(fd, frame), os.fdatasync(fd)))))

    for name, us in results:
        print(f"{us:8.1f} µs  {name}")


if __name__ == "__main__":
    main()
