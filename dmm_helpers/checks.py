"""Checks of user input and the one way this project writes a file.

Every public function of the package that takes a count, a probability or a
rate checks it here, so the same mistake gets the same message everywhere;
every file the project writes (checkpoints, logs, command files, downloads,
shipped files, MIDI, images) goes through :func:`atomic_write`.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


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
    low = "" if minimum is None else f"{'>=' if include_minimum else '>'} {minimum:g}"
    high = "" if maximum is None else f"{'<=' if include_maximum else '<'} {maximum:g}"
    bounds = " and ".join(part for part in (low, high) if part)
    wanted = f"a finite number {bounds}".rstrip()
    in_range = math.isfinite(value)
    if in_range and minimum is not None:
        in_range = value >= minimum if include_minimum else value > minimum
    if in_range and maximum is not None:
        in_range = value <= maximum if include_maximum else value < maximum
    if not in_range:
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return float(value)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success, flush, sync and rename it.

    Readers never see a half-written file: until the ``with`` block ends
    without an error, ``path`` keeps its previous content (or stays absent).
    On any error, the disk filling up included, the temporary file is
    removed and the error propagates. The temporary name is unique (two
    writers of the same file never share one) and hidden (``.NAME.*.part``).

    ``mode`` is ``"wb"`` (bytes) or ``"w"`` (text, UTF-8).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f'mode must be "wb" or "w", got {mode!r}')
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".part"
    )
    try:
        encoding = None if mode == "wb" else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
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
