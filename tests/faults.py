"""Faults for the tests: a disk that fills up, and a folder's state to compare.

:func:`disk_fills` makes the writes of one file fail as a full disk does:
the first bytes go through, then ``OSError(ENOSPC)``. Every file the package
writes is opened with ``os.fdopen`` (:mod:`dmm_helpers.checks`), so the fault
reaches it wherever it is written, ``torch.save`` included (which turns the
failed write into a ``RuntimeError``, as on a real full disk).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device"


class FillingFile:
    """A file whose writes fail with ENOSPC once ``room`` bytes (or chars) are in."""

    def __init__(self, file: Any, room: int) -> None:
        self.file = file
        self.room = room

    def write(self, data: Any) -> int:
        if len(data) > self.room:
            self.file.write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, NO_SPACE)
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)

    def __enter__(self) -> FillingFile:
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self.file.__exit__(*exc)


@contextmanager
def disk_fills(name: str, room: int = 64) -> Iterator[list[str]]:
    """Within the block, writes of files called ``name`` fail after ``room`` bytes.

    The file itself (appended to) and its atomic temporaries
    (``.name.*.part``) are hit. Yields the names of the files hit, so that a
    test can check that the fault was reached.
    """
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("finds the file of a descriptor in /proc (Linux)")
    real = os.fdopen
    hit: list[str] = []

    def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        file = real(fd, *args, **kwargs)
        opened = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        if opened == name or opened.startswith(f".{name}."):
            hit.append(opened)
            return FillingFile(file, room)
        return file

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "fdopen", fdopen)
        yield hit
    assert hit, f"nothing wrote {name}: the fault was never reached"


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below ``folder``: its bytes and modification time (ns)."""
    if not folder.exists():
        return {}
    return {
        str(path.relative_to(folder)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def temporaries(folder: Path) -> list[str]:
    """Temporary files of interrupted atomic writes below ``folder``."""
    return [str(path) for path in folder.rglob("*.part")]
