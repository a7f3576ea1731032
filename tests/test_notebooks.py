"""The chapters' conventions, checked on the stored notebooks.

Executing the notebooks is nbval's job (``pytest --nbval-lax notebooks``);
this file checks what nbval cannot see: that the notebooks are stored without
outputs, that every chapter opens with the same guarded Colab set-up cell and
the smoke-mode switch, that chapter and package code never drift apart
(``# @save`` cells), and that each chapter has the parts a course needs.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPOSITORY_URL = CONFIG["repository"]["url"].rstrip("/")

SAVE_MARKER = "# @save"

# The first code cell of every chapter, character for character.
COLAB_CELL = f"""\
# On Google Colab, install what Colab lacks (never torch) and this book's
# helper package; anywhere else this cell does nothing.
import sys

try:
    import google.colab  # noqa: F401  (importable only on Colab)
except ImportError:
    pass
else:
    import subprocess

    repository = "{REPOSITORY_URL}"
    pip_install = [sys.executable, "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip_install, f"dmm-helpers @ git+{{repository}}"], check=True)
    # FluidSynth and a General MIDI soundfont give the audio players real
    # instruments; without them the book falls back to its own synthesis.
    apt_install = ["apt-get", "install", "-y", "-qq"]
    subprocess.run([*apt_install, "fluidsynth", "fluid-soundfont-gm"])"""

SMOKE_LINE = 'smoke_test = "CI" in os.environ'


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _code_cells(nb: nbformat.NotebookNode) -> list[str]:
    return [cell.source for cell in nb.cells if cell.cell_type == "code"]


def _markdown(nb: nbformat.NotebookNode) -> str:
    return "\n\n".join(cell.source for cell in nb.cells if cell.cell_type == "markdown")


def _toc_files(node: object) -> list[str]:
    """Every ``file:`` entry of the table of contents, depth first."""
    found: list[str] = []
    if isinstance(node, dict):
        if "file" in node:
            found.append(node["file"])
        for value in node.values():
            found.extend(_toc_files(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_toc_files(item))
    return found


def save_cell_mismatches(source: str) -> list[str]:
    """Compare a ``# @save dmm_helpers.<module>`` cell with the module's source.

    Returns one message per problem; an empty list means that every ``def``
    and ``class`` in the cell is identical (as an abstract syntax tree,
    docstrings included) to the same-named top-level one in the module.
    """
    first_line, _, body = source.partition("\n")
    marker, _, module_name = first_line.partition(" dmm_helpers.")
    if marker != SAVE_MARKER or not module_name or " " in module_name:
        return [
            f"first line must be '{SAVE_MARKER} dmm_helpers.<module>', got {first_line!r}"
        ]
    module_name = "dmm_helpers." + module_name
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        return [f"module {module_name} does not exist"]
    module_tree = ast.parse(Path(spec.origin).read_text())
    definitions = {
        node.name: node
        for node in module_tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    }
    problems = []
    cell_tree = ast.parse(body)
    defined = 0
    for node in cell_tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            problems.append(
                f"line {node.lineno + 1}: only imports, def and class belong in a save cell"
            )
            continue
        defined += 1
        original = definitions.get(node.name)
        if original is None:
            problems.append(f"{node.name} is not defined in {module_name}")
        elif ast.dump(original) != ast.dump(node):
            problems.append(f"{node.name} differs from {module_name}.{node.name}")
    if defined == 0:
        problems.append("a save cell must define at least one function or class")
    return problems


def test_notebooks_exist_and_match_the_table_of_contents():
    assert NOTEBOOKS, "no chapters found in notebooks/"
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    listed = _toc_files(toc)
    for entry in listed:
        matches = [
            p for p in (ROOT / f"{entry}.ipynb", ROOT / f"{entry}.md") if p.exists()
        ]
        assert matches, (
            f"_toc.yml lists {entry}, which is neither a notebook nor a page"
        )
    chapters = [f"notebooks/{p.stem}" for p in NOTEBOOKS]
    missing = sorted(set(chapters) - set(listed))
    assert not missing, f"chapters missing from _toc.yml: {missing}"
    in_toc_order = [entry for entry in listed if entry.startswith("notebooks/")]
    assert in_toc_order == chapters, (
        "chapters must appear in _toc.yml in file-name order"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_without_outputs(path):
    nb = _read(path)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [], f"{path.name} cell {index} has stored outputs"
        assert cell.execution_count is None, (
            f"{path.name} cell {index} has an execution count"
        )
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_cell_installs_only_on_colab(path):
    cells = _code_cells(_read(path))
    assert cells[0] == COLAB_CELL, (
        f"{path.name}: the first code cell must be the book's Colab set-up cell, "
        f"installing from {REPOSITORY_URL} (the repository in _config.yml)"
    )


def test_colab_cell_is_guarded_and_leaves_torch_alone():
    """The installer runs only where ``google.colab`` imports, and never names torch."""
    tree = ast.parse(COLAB_CELL)
    guard = next(node for node in tree.body if isinstance(node, ast.Try))
    (handler,) = guard.handlers
    assert isinstance(handler.type, ast.Name) and handler.type.id == "ImportError"
    assert [type(n) for n in handler.body] == [ast.Pass]
    assert any(
        isinstance(n, ast.Import) and n.names[0].name == "google.colab"
        for n in guard.body
    )
    installs = [
        n
        for n in ast.walk(ast.Module(body=guard.orelse, type_ignores=[]))
        if isinstance(n, ast.Call)
    ]
    assert installs, "the else branch must install the helper package"
    outside = [n for n in tree.body if n is not guard]
    assert all(isinstance(n, ast.Import) for n in outside), (
        "nothing may run outside the guard"
    )
    assert "torch" not in COLAB_CELL.split("never torch")[1]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_second_cell_sets_smoke_mode_and_seed(path):
    cells = _code_cells(_read(path))
    assert SMOKE_LINE in cells[1], (
        f"{path.name}: the second code cell must set {SMOKE_LINE!r}"
    )
    assert "pyro.set_rng_seed(" in cells[1], (
        f"{path.name}: the second code cell must seed Pyro"
    )
    assert ".cuda()" not in "\n".join(cells), (
        f"{path.name}: choose the device, never hard-code .cuda()"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_save_cells_equal_the_package(path):
    save_cells = [
        src for src in _code_cells(_read(path)) if src.startswith(SAVE_MARKER)
    ]
    for src in save_cells:
        problems = save_cell_mismatches(src)
        assert not problems, f"{path.name}: " + "; ".join(problems)


def test_save_check_catches_drift():
    """The checker itself: an edited copy of a package function is caught."""
    source = inspect.getsource(importlib.import_module("dmm_helpers.data").make_batch)
    assert save_cell_mismatches(f"{SAVE_MARKER} dmm_helpers.data\n{source}") == []
    drifted = source.replace("lengths", "lens", 1)
    assert drifted != source
    assert save_cell_mismatches(f"{SAVE_MARKER} dmm_helpers.data\n{drifted}") != []
    assert save_cell_mismatches(f"{SAVE_MARKER} dmm_helpers.data\nx = 1\n") != []
    assert save_cell_mismatches(f"{SAVE_MARKER} dmm_helpers.nope\n{source}") != []
    assert save_cell_mismatches(f"# @save\n{source}") != []


EXERCISE = re.compile(r"```\{exercise\}[^\n]*\n:label: (ex-[\w-]+)")
SOLUTION = re.compile(r"```\{solution\} (ex-[\w-]+)\n((?::[\w-]+:[^\n]*\n)*)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_has_goals_summary_exercises_and_references(path):
    text = _markdown(_read(path))
    number = path.stem[:2]
    assert text.lstrip().startswith(f"# {number}. "), (
        f"{path.name}: must open with '# {number}. Title'"
    )
    for heading in (
        "**Learning goals**",
        "## Summary",
        "## Exercises",
        "## References",
    ):
        assert heading in text, f"{path.name}: missing {heading}"
    exercises = EXERCISE.findall(text)
    assert 3 <= len(exercises) <= 6, (
        f"{path.name}: {len(exercises)} exercises, want 3 to 6"
    )
    assert all(label.startswith(f"ex-{number}-") for label in exercises), exercises
    solutions = {label: options for label, options in SOLUTION.findall(text)}
    for label in exercises:
        assert label in solutions, f"{path.name}: exercise {label} has no solution"
        assert ":class: dropdown" in solutions[label], (
            f"{path.name}: solution {label} must be hidden"
        )
    assert "{cite" in text, f"{path.name}: cite the literature with {{cite}} roles"


def test_exercise_labels_are_unique_across_the_book():
    labels = [
        label
        for path in NOTEBOOKS
        for label in EXERCISE.findall(_markdown(_read(path)))
    ]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    assert not duplicates, f"exercise labels used twice: {duplicates}"
