"""What the chapters use to show code and tables (introduced in chapters 02-04).

Code that a chapter *defines* sits in a cell that starts with ``# @save``
(checked against the package by ``tests/test_notebooks.py``); a method of a
package class gets a cell of its own with :func:`add_to_class`. Code that a
chapter only *shows* is displayed from the package itself with
:func:`show_source`, so what the reader sees is what runs.
"""

from __future__ import annotations

import inspect
import re
import textwrap
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from IPython.display import Markdown

_Function = TypeVar("_Function")


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> Markdown:
    """A Markdown table from a header and rows of already formatted cells."""
    lines = [
        "| " + " | ".join(str(cell) for cell in header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return Markdown("\n".join(lines))


def wrap_command(command: str, width: int = 88) -> str:
    """A shell command in lines of at most ``width`` characters, continued by ``\\``.

    Breaks only at spaces (never inside a flag or a path), indents the
    continuation lines by four spaces; the shell reads it as the one line.
    """
    lines = textwrap.wrap(
        command,
        width - 2,  # room for " \\"
        subsequent_indent="    ",
        break_long_words=False,
        break_on_hyphens=False,
    )
    return " \\\n".join(lines)


def add_to_class(cls: type) -> Callable[[_Function], _Function]:
    """Decorator that makes a function a method of ``cls`` (d2l's ``add_to_class``).

    A chapter introduces one method of a class in a cell of its own::

        @add_to_class(DMM)
        def guide(self, batch, annealing_factor=1.0): ...

    ``setattr(cls, name, function)``: every instance of ``cls``, including
    those made before, uses the new definition from then on. The function
    is returned unchanged. Put it above any other decorator, so that the
    class receives the decorated function.
    """
    if not isinstance(cls, type):
        raise TypeError(f"add_to_class takes a class, got {cls!r}")

    def register(function: _Function) -> _Function:
        setattr(cls, function.__name__, function)
        return function

    return register


def show_source(
    obj: Any, start: str | None = None, stop: str | None = None
) -> Markdown:
    """The source code of ``obj`` (a function, method, class or module), highlighted.

    For code that a chapter shows without defining it: the text comes from
    the package's own file, so it cannot drift from what runs. With
    ``start``, the excerpt begins at the first line that contains ``start``;
    with ``stop``, it ends at the first line from there whose text (after
    its indentation) begins with ``stop``. The excerpt is dedented and
    returned as a Markdown code block (a cell displays it).
    """
    lines = inspect.getsource(obj).splitlines()
    first, last = 0, len(lines) - 1
    if start is not None:
        first = next((i for i, line in enumerate(lines) if start in line), None)
        if first is None:
            raise ValueError(f"no line of {_name(obj)}'s source contains {start!r}")
    if stop is not None:
        last = next(
            (i for i in range(first, len(lines)) if lines[i].lstrip().startswith(stop)),
            None,
        )
        if last is None:
            raise ValueError(
                f"no line of {_name(obj)}'s source from {start!r} on begins with "
                f"{stop!r}"
            )
    code = textwrap.dedent("\n".join(lines[first : last + 1]))
    # A fence longer than any run of backticks in the code.
    longest = max((len(run) for run in re.findall("`+", code)), default=0)
    fence = "`" * max(3, longest + 1)
    return Markdown(f"{fence}python\n{code}\n{fence}")


def _name(obj: Any) -> str:
    return getattr(obj, "__qualname__", getattr(obj, "__name__", repr(obj)))
