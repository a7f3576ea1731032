"""The shared input checks and the atomic file writer."""

from __future__ import annotations

import math

import pytest

from dmm_helpers.checks import atomic_write, finite_number, positive_int, write_bytes


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
