"""The shared input checks and the atomic file writer."""

from __future__ import annotations

import errno
import math
import os

import pytest

from dmm_helpers.checks import (
    Range,
    WriteError,
    append_text,
    atomic_write,
    finite_number,
    positive_int,
    write_bytes,
)


@pytest.mark.parametrize("value", [1, 7, 10**12])
def test_positive_int_accepts(value):
    assert positive_int("count", value) == value


@pytest.mark.parametrize("value", [0, -3, 1.0, True, "2", None])
def test_positive_int_refuses_by_name(value):
    with pytest.raises(ValueError, match=r"^count must be a positive int, got "):
        positive_int("count", value)


def test_finite_number_ranges():
    assert finite_number("rate", 3) == 3.0
    assert finite_number("beta", 0.0, minimum=0, maximum=1, include_maximum=False) == 0
    with pytest.raises(ValueError, match=r"^rate must be a finite number > 0, got 0"):
        finite_number("rate", 0, minimum=0, include_minimum=False)
    with pytest.raises(ValueError, match=r">= 0 and < 1, got 1"):
        finite_number("beta", 1, minimum=0, maximum=1, include_maximum=False)
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="must be a finite number"):
            finite_number("rate", bad)
    with pytest.raises(TypeError, match="rate must be a number"):
        finite_number("rate", True)


def test_atomic_write_replaces_or_keeps(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    write_bytes(target, b"first")
    assert target.read_bytes() == b"first"
    with pytest.raises(OSError, match="disk full"):
        with atomic_write(target) as file:
            file.write(b"half of the sec")
            raise OSError("disk full")
    assert target.read_bytes() == b"first"  # the previous version, intact
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]
    with atomic_write(target, "w") as file:
        file.write("second")
    assert target.read_text() == "second"
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(target, "a"):
            pass


def test_a_range_says_what_it_allows_and_checks_it():
    rate = Range(0.0, include_minimum=False)
    assert str(rate) == "a finite number > 0"
    assert str(Range(0.0, 1.0, include_maximum=False)) == "a finite number >= 0 and < 1"
    assert str(Range(1, integer=True)) == "an integer >= 1"
    assert 1e-9 in rate and 0.0 not in rate and -1 not in rate
    for bad in (math.nan, math.inf, True, "1", None):
        assert bad not in rate
    assert 2 in Range(1, integer=True) and 2.0 not in Range(1, integer=True)
    assert 10**400 in Range(1, integer=True)  # no overflow on huge ints
    with pytest.raises(ValueError, match=r"^--lr must be a finite number > 0, got nan"):
        rate.check("--lr", math.nan)


def test_a_failed_write_names_the_file_and_keeps_the_previous_version(tmp_path):
    target = tmp_path / "file.bin"
    write_bytes(target, b"first")
    with pytest.raises(WriteError) as failed:
        with atomic_write(target) as file:
            file.write(b"half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert failed.value.errno == errno.ENOSPC
    assert failed.value.strerror == (
        f"could not write {target}: No space left on device; the previous file.bin "
        "is intact"
    )
    assert target.read_bytes() == b"first"
    with pytest.raises(WriteError, match="no new.bin was written"):
        with atomic_write(tmp_path / "new.bin") as file:
            raise OSError(errno.EIO, "I/O error")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin"]
    with pytest.raises(
        WriteError, match=r"write .*inside: .*file.bin is a file, not a folder"
    ):
        write_bytes(target / "inside", b"x")  # a file where a folder should be


def test_append_text_appends_a_whole_line_or_nothing(tmp_path, monkeypatch):
    log = tmp_path / "log.jsonl"
    append_text(log, "one\n")
    append_text(log, "two\n")
    assert log.read_text() == "one\ntwo\n"
    real = os.fdopen

    class FullDisk:
        def __init__(self, file):
            self.file = file

        def write(self, data):
            self.file.write(data[:3])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.file.__exit__(*exc)

    monkeypatch.setattr(os, "fdopen", lambda *a, **k: FullDisk(real(*a, **k)))
    with pytest.raises(WriteError, match="log.jsonl: No space left on device"):
        append_text(log, "three, torn\n")
    monkeypatch.undo()
    assert log.read_text() == "one\ntwo\n"  # cut back: no torn line
