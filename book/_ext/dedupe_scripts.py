"""Sphinx extension: give each page every script once.

sphinx-thebe and sphinx-togglebutton add their inline configuration scripts
after the HTML builder has started, and Sphinx 7 then writes them twice into
every page (once with the file name ``None``, once with ``''``). Twice is
harmful for sphinx-thebe's ``const THEBE_JS_URL = ...``: the second
declaration is a script error in every browser console. This removes such
duplicates (same file or none, same inline body and attributes) from a page's
scripts before it is rendered, keeping the first.
"""

from __future__ import annotations

from typing import Any


def _key(script: Any) -> tuple:
    filename = getattr(script, "filename", script) or ""
    attributes = getattr(script, "attributes", {}) or {}
    return (str(filename), tuple(sorted((k, str(v)) for k, v in attributes.items())))


def dedupe(
    app: Any, pagename: str, templatename: str, context: dict, doctree: Any
) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple] = set()
    unique = []
    for script in scripts:
        key = _key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app: Any) -> dict[str, Any]:
    app.connect("html-page-context", dedupe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
