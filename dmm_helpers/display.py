"""Small display helpers shared by the chapters (introduced in chapter 02)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from IPython.display import Markdown


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> Markdown:
    """A Markdown table from a header and rows of already formatted cells."""
    lines = [
        "| " + " | ".join(str(cell) for cell in header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return Markdown("\n".join(lines))
