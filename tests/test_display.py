"""Display helpers: a wrapped shell command is the same command."""

from __future__ import annotations

import shlex

import pytest

from dmm_helpers.display import wrap_command

COMMAND = (
    "python -m dmm_helpers.train --out runs/jsb_guide_st_lr --epochs 1000 "
    "--annealing-epochs 0 --eval-every 25 --no-progress --guide st-lr"
)


@pytest.mark.parametrize("width", [30, 60, 88, 200])
def test_a_wrapped_command_fits_and_the_shell_reads_the_same_words(width):
    wrapped = wrap_command(COMMAND, width)
    assert all(len(line) <= width for line in wrapped.splitlines())
    assert shlex.split(wrapped.replace("\\\n", " ")) == shlex.split(COMMAND)
    assert (len(wrapped.splitlines()) == 1) == (len(COMMAND) <= width - 2)
