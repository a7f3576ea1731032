"""What the commands share: checked flags, one-line errors and the exit status.

``python -m dmm_helpers.train``, ``dmm_helpers.evaluate`` and
``dmm_helpers.pretrained`` end with one of these exit statuses
(:data:`EXIT_STATUSES`, printed at the end of each ``--help``):

- 0: done;
- 1: a problem with the data, a checkpoint, the run folder or the run itself
  (a full disk, a diverged run): one line ``error: ...`` on stderr and no
  traceback; ``--debug``, or the environment variable ``DMM_DEBUG=1``, shows
  the traceback instead, for a bug report;
- 2: a bad command line (an unknown flag, or a value out of its range), from
  the parser, before anything is read or written;
- 128 + N: stopped by signal N (training saves a checkpoint first), 130 for
  Ctrl-C.

Every numeric flag is parsed by :func:`number_flag`, so NaN, infinities and
values out of range are usage errors like a misspelt flag.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from dmm_helpers.checks import Range

EXIT_ERROR = 1  # a problem with the data, a checkpoint, the run folder or the run
EXIT_USAGE = 2  # a bad command line (argparse's own status)
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT
DEBUG_VARIABLE = "DMM_DEBUG"  # set (to anything but 0) to see tracebacks

# Ranges that flags of several commands share.
COUNT = Range(1, integer=True)  # sizes, counts and samples
SEED = Range(0, 2**32 - 1, integer=True)  # times a million still seeds a Generator

EXIT_STATUSES = (
    "exit status: 0 done; 1 a problem with the data, a checkpoint, the run folder "
    "or the run (one line 'error: ...' on stderr; --debug or DMM_DEBUG=1 shows the "
    "traceback); 2 a bad command line; 128+N stopped by signal N"
)

# What a user can cause and fix: bad files, data, settings, a full disk. Other
# exceptions are bugs and keep their traceback.
PROBLEMS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    KeyError,
    OSError,
    torch.cuda.OutOfMemoryError,
)


def message_of(error: BaseException) -> str:
    """``error``'s message on one line, without Python's decorations."""
    if isinstance(error, KeyError) and error.args:
        text = str(error.args[0])  # str(KeyError) quotes its message
    elif isinstance(error, OSError) and error.strerror:
        text = error.strerror
        if error.filename is not None:
            text += f": {error.filename}"
    else:
        text = str(error) or type(error).__name__
    if isinstance(error, torch.cuda.OutOfMemoryError):
        text = (
            f"out of memory on the device ({text.splitlines()[0]}); smaller "
            "batches need less (--batch-size, --eval-batch-size, --chunk-size)"
        )
    return " ".join(text.split())


def debugging(flag: bool = False) -> bool:
    """Whether to show tracebacks: ``--debug`` given, or ``DMM_DEBUG`` set."""
    return flag or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


@contextmanager
def errors_reported(
    debug: bool = False, problems: tuple[type[BaseException], ...] = ()
) -> Iterator[None]:
    """Turn the user's problems raised inside into ``error: ...`` and exit 1.

    ``problems`` adds exception types to :data:`PROBLEMS` (the trainer's
    ``NonFiniteLossError``, say). Ctrl-C exits with 130 and the word
    ``interrupted``. With ``debug`` (or ``DMM_DEBUG``) everything propagates,
    traceback and all.
    """
    try:
        yield
    except PROBLEMS + problems as error:
        if debugging(debug):
            raise
        print(f"error: {message_of(error)}", file=sys.stderr)
        raise SystemExit(EXIT_ERROR) from None
    except KeyboardInterrupt:
        if debugging(debug):
            raise
        print("error: interrupted", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None


def number_flag(allowed: Range) -> Callable[[str], int | float]:
    """An argparse ``type`` that parses a number and refuses it outside ``allowed``.

    The parser then reports ``argument --flag: must be a finite number > 0,
    got nan`` as a usage error (exit 2).
    """

    def parse(text: str) -> int | float:
        try:
            value = int(text) if allowed.integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be {allowed}, got {text!r}"
            ) from None
        if value not in allowed:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text}")
        return value

    parse.__name__ = "integer" if allowed.integer else "number"
    return parse


def text_flag(text: str) -> str:
    """An argparse ``type`` for a name or a path: anything but the empty string."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def new_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser whose ``--help`` ends with the exit statuses and that has ``--debug``.

    Flags must be spelt out (no abbreviations): a command recorded in a run
    folder then reads the same whatever flags later versions add.
    """
    parser = argparse.ArgumentParser(
        prog=prog, description=description, epilog=EXIT_STATUSES, allow_abbrev=False
    )
    return parser


def add_debug_flag(group: Any) -> None:
    """``--debug``: show the traceback of an error instead of one line."""
    group.add_argument(
        "--debug",
        action="store_true",
        help=f"Show the full traceback of an error (as {DEBUG_VARIABLE}=1 does).",
    )
