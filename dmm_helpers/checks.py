"""Checks of user input and the one way this project writes a file.

Every public function of the package that takes a count, a probability or a
rate checks it here, so the same mistake gets the same message everywhere
(:class:`Range` is the allowed range of one number, as the command lines
check their flags too); every file the project writes (checkpoints, logs,
command files, downloads, shipped files, MIDI, images) goes through
:func:`atomic_write`, or :func:`append_text` for a log's new line. A write
that fails, a full disk included, is a :class:`WriteError` that names the
file and leaves its previous version as it was.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any


@dataclass(frozen=True)
class Range:
    """The values one number may take: finite, within bounds, an int if ``integer``.

    ``str(Range(0, include_minimum=False))`` is ``"a finite number > 0"``,
    the words every message about it uses.
    """

    minimum: float | None = None
    maximum: float | None = None
    include_minimum: bool = True
    include_maximum: bool = True
    integer: bool = False

    def __str__(self) -> str:
        def bound(value: float) -> str:
            return str(value) if self.integer else f"{value:g}"

        bounds = []
        if self.minimum is not None:
            bounds.append(
                f"{'>=' if self.include_minimum else '>'} {bound(self.minimum)}"
            )
        if self.maximum is not None:
            bounds.append(
                f"{'<=' if self.include_maximum else '<'} {bound(self.maximum)}"
            )
        kind = "an integer" if self.integer else "a finite number"
        return " ".join([kind, " and ".join(bounds)]).rstrip()

    def __contains__(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.minimum is not None and not (
            value >= self.minimum if self.include_minimum else value > self.minimum
        ):
            return False
        return self.maximum is None or (
            value <= self.maximum if self.include_maximum else value < self.maximum
        )

    def check(self, name: str, value: Any) -> Any:
        """``value`` if it lies in the range; else a ``ValueError`` naming ``name``."""
        if value not in self:
            raise ValueError(f"{name} must be {self}, got {value!r}")
        return value


def shape_of(value: Any) -> object:
    """A tensor's shape, or the type name of anything else, for error messages."""
    shape = getattr(value, "shape", None)
    return tuple(shape) if shape is not None else type(value).__name__


def positive_int(name: str, value: Any) -> int:
    """``value`` if it is an int >= 1 (not a bool); else a ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def finite_number(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    include_minimum: bool = True,
    include_maximum: bool = True,
) -> float:
    """``value`` as a float if it is a finite real number in the given range.

    A bool, a string or a tensor is a ``TypeError``; NaN, an infinity or a
    value out of range is a ``ValueError`` whose message names ``name`` and
    the allowed range, e.g. ``learning_rate must be a finite number > 0``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    allowed = Range(minimum, maximum, include_minimum, include_maximum)
    return float(allowed.check(name, value))


class WriteError(OSError):
    """A file could not be written (a full disk, say); its previous version is intact.

    ``errno`` is the system's; the message names the file and the reason.
    """


def write_error(path: str | os.PathLike, error: OSError) -> WriteError:
    """The :class:`WriteError` that says ``error`` stopped the writing of ``path``."""
    path = Path(path)
    kept = (
        f"the previous {path.name} is intact"
        if path.exists()
        else f"no {path.name} was written"
    )
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        reason = f"{blocking} is a file, not a folder"
    else:
        reason = error.strerror or str(error) or type(error).__name__
    return WriteError(error.errno, f"could not write {path}: {reason}; {kept}")


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success, flush, sync and rename it.

    Readers never see a half-written file: until the ``with`` block ends
    without an error, ``path`` keeps its previous content (or stays absent).
    On any error the temporary file is removed and the error propagates; an
    error of the system (an ``OSError`` with an ``errno``, as when the disk
    fills up) becomes a :class:`WriteError` that names ``path``. The
    temporary name is unique (two writers of the same file never share one)
    and hidden (``.NAME.*.part``).

    ``mode`` is ``"wb"`` (bytes) or ``"w"`` (text, UTF-8).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f'mode must be "wb" or "w", got {mode!r}')
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".part"
        )
    except OSError as error:
        raise write_error(path, error) from error
    try:
        encoding = None if mode == "wb" else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, path)
    except BaseException as error:
        Path(tmp_name).unlink(missing_ok=True)
        if (
            isinstance(error, OSError)
            and not isinstance(error, WriteError)
            and error.errno is not None
        ):
            raise write_error(path, error) from error
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "wb") as file:
        file.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "w") as file:
        file.write(text)


def write_with(path: str | os.PathLike, writer: Callable[[IO[bytes]], None]) -> None:
    """Let ``writer`` (e.g. ``torch.save``) write ``path`` atomically, in binary."""
    with atomic_write(path, "wb") as file:
        writer(file)


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append ``text`` (UTF-8) to ``path``, all of it or nothing.

    The file is created if need be. If the write fails (a full disk, say),
    the file is cut back to its previous length, so it never ends in a torn
    line, and a :class:`WriteError` names it. (A process killed in the middle
    can still leave a torn end; readers of logs drop it.)
    """
    path = Path(path)
    data = text.encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    except OSError as error:
        raise write_error(path, error) from error
    with os.fdopen(fd, "ab", buffering=0) as file:  # unbuffered: no late flush
        size = file.seek(0, os.SEEK_END)
        try:
            written = 0
            while written < len(data):
                written += file.write(data[written:])
            os.fsync(file.fileno())
        except OSError as error:
            file.truncate(size)
            raise write_error(path, error) from error
