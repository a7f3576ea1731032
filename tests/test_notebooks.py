"""The chapters' conventions, checked on the stored notebooks.

Executing the notebooks is nbval's job (``pytest --nbval-lax notebooks``);
this file checks what nbval cannot see: that the notebooks are stored without
outputs, that every chapter opens with the same guarded Colab set-up cell and
the smoke-mode switch, that chapter and package code never drift apart
(``# @save`` cells), that a chapter neither shadows a package name nor gives
one of its own names two meanings, that code fits the page, and that each
chapter has the parts a course needs.

A save cell's first line says which package code it holds:

- ``# @save dmm_helpers.<module>``: every ``def`` and ``class`` in the cell
  is the module's top-level definition of that name, whole;
- ``# @save dmm_helpers.<module>.<Class>``: parts of one class, each shown
  where a chapter introduces it: the class's opening (its header, docstring
  and some of its members) and single methods, each decorated first with
  ``@add_to_class(<Class>)`` (:func:`dmm_helpers.display.add_to_class`).

"The same" means the same abstract syntax tree, docstrings included (as
``inspect.cleandoc`` reads them, so that a method may be dedented);
``add_to_class`` is left out of the comparison. When the package changed on
purpose, ``python tests/test_notebooks.py --sync NOTEBOOK...`` copies the
package's current text into the save cells (review the diff and the prose).
"""

from __future__ import annotations

import ast
import builtins
import copy
import importlib
import importlib.util
import inspect
import re
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPOSITORY_URL = CONFIG["repository"]["url"].rstrip("/")
# ruff's line length (pyproject.toml, [tool.ruff]): what fits the website's column.
LINE_LENGTH = int(
    re.search(
        r"^line-length = (\d+)$", (ROOT / "pyproject.toml").read_text(), re.MULTILINE
    )[1]
)

SAVE_MARKER = "# @save"
SAVE_LINE = re.compile(r"# @save dmm_helpers\.(?P<module>\w+)(?:\.(?P<cls>\w+))?")
DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
SMOKE_LINE = 'smoke_test = "CI" in os.environ'


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _code_cells(nb: nbformat.NotebookNode) -> list[str]:
    return [cell.source for cell in nb.cells if cell.cell_type == "code"]


def _numbered_code_cells(path: Path) -> list[tuple[int, str]]:
    """``(cell number in the notebook, source)`` of every code cell."""
    cells = enumerate(_read(path).cells)
    return [(number, cell.source) for number, cell in cells if cell.cell_type == "code"]


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


# --- save cells ----------------------------------------------------------------


def _module_tree(module_name: str) -> ast.Module | None:
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        return None
    return ast.parse(Path(spec.origin).read_text())


def _member_name(node: ast.stmt) -> str | None:
    """The name a statement of a class body defines: a def, a class, ``x = ...``."""
    if isinstance(node, DEFINITIONS):
        return node.name
    targets = node.targets if isinstance(node, ast.Assign) else []
    if isinstance(node, ast.AnnAssign):
        targets = [node.target]
    if len(targets) == 1 and isinstance(targets[0], ast.Name):
        return targets[0].id
    return None


def _is_docstring(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def _adds_to(decorator: ast.expr, class_name: str) -> bool:
    """Whether ``decorator`` is ``add_to_class(<class_name>)``."""
    if not isinstance(decorator, ast.Call) or len(decorator.args) != 1:
        return False
    function, (argument,) = decorator.func, decorator.args
    name = function.id if isinstance(function, ast.Name) else None
    if isinstance(function, ast.Attribute):
        name = function.attr
    return (
        name == "add_to_class"
        and isinstance(argument, ast.Name)
        and argument.id == class_name
    )


def _dump(node: ast.AST) -> str:
    """``ast.dump`` with every docstring as ``inspect.cleandoc`` reads it.

    A method shown on its own in a cell is dedented, which changes the
    indentation inside its docstring but not the docstring itself.
    """
    node = copy.deepcopy(node)
    if _is_docstring(node):
        node.value.value = inspect.cleandoc(node.value.value)
    for inner in ast.walk(node):
        body = getattr(inner, "body", None)
        if isinstance(body, list) and body and _is_docstring(body[0]):
            body[0].value.value = inspect.cleandoc(body[0].value.value)
    return ast.dump(node)


def _without_first_decorator(node: ast.FunctionDef) -> ast.FunctionDef:
    method = copy.copy(node)
    method.decorator_list = node.decorator_list[1:]
    return method


def _class_header(node: ast.ClassDef) -> str:
    parts = (node.bases, node.keywords, node.decorator_list)
    return repr([[ast.dump(item) for item in part] for part in parts])


def _class_part_mismatches(
    cell: ast.Module, module_tree: ast.Module, module_name: str, class_name: str
) -> list[str]:
    """Problems of a ``# @save dmm_helpers.<module>.<Class>`` cell."""
    where = f"{module_name}.{class_name}"
    package_class = next(
        (
            node
            for node in module_tree.body
            if isinstance(node, ast.ClassDef) and node.name == class_name
        ),
        None,
    )
    if package_class is None:
        return [f"{where} is not a class of {module_name}"]
    members = {_member_name(node): node for node in package_class.body}
    problems: list[str] = []
    shown = 0
    for node in cell.body:
        line = f"line {node.lineno + 1}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            shown += 1
            if _class_header(node) != _class_header(package_class):
                problems.append(f"the header of {class_name} differs from {where}'s")
            body = node.body
            if _is_docstring(package_class.body[0]):
                if not body or _dump(body[0]) != _dump(package_class.body[0]):
                    problems.append(
                        f"the opening of {class_name} must start with {where}'s "
                        "docstring"
                    )
                body = body[1:]
            for statement in body:
                name = _member_name(statement)
                original = members.get(name)
                if name is None:
                    problems.append(
                        f"line {statement.lineno + 1}: only methods and attributes "
                        f"belong in the opening of {class_name}"
                    )
                elif original is None:
                    problems.append(f"{class_name}.{name} is not defined in {where}")
                elif _dump(original) != _dump(statement):
                    problems.append(f"{class_name}.{name} differs from {where}.{name}")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if not node.decorator_list or not _adds_to(
                node.decorator_list[0], class_name
            ):
                problems.append(
                    f"{line}: {node.name} must be decorated first with "
                    f"@add_to_class({class_name})"
                )
                continue
            shown += 1
            original = members.get(node.name)
            if original is None:
                problems.append(f"{class_name}.{node.name} is not defined in {where}")
            elif _dump(original) != _dump(_without_first_decorator(node)):
                problems.append(
                    f"{class_name}.{node.name} differs from {where}.{node.name}"
                )
        else:
            problems.append(
                f"{line}: only imports, the opening of {class_name} and its "
                f"@add_to_class methods belong in this save cell"
            )
    if shown == 0:
        problems.append(f"a save cell of {class_name} must show a part of it")
    return problems


def save_cell_mismatches(source: str) -> list[str]:
    """Compare a save cell with the package (see this module's docstring).

    Returns one message per problem; an empty list means that every
    definition in the cell is identical (as an abstract syntax tree,
    docstrings included) to the package's.
    """
    first_line, _, body = source.partition("\n")
    marker = SAVE_LINE.fullmatch(first_line.rstrip())
    if marker is None:
        return [
            f"first line must be '{SAVE_MARKER} dmm_helpers.<module>' or "
            f"'{SAVE_MARKER} dmm_helpers.<module>.<Class>', got {first_line!r}"
        ]
    module_name = "dmm_helpers." + marker["module"]
    module_tree = _module_tree(module_name)
    if module_tree is None:
        return [f"module {module_name} does not exist"]
    cell_tree = ast.parse(body)
    if marker["cls"]:
        return _class_part_mismatches(
            cell_tree, module_tree, module_name, marker["cls"]
        )
    definitions = {
        node.name: node for node in module_tree.body if isinstance(node, DEFINITIONS)
    }
    problems = []
    defined = 0
    for node in cell_tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if not isinstance(node, DEFINITIONS):
            problems.append(
                f"line {node.lineno + 1}: only imports, def and class belong in a save "
                "cell"
            )
            continue
        defined += 1
        original = definitions.get(node.name)
        if original is None:
            problems.append(f"{node.name} is not defined in {module_name}")
        elif _dump(original) != _dump(node):
            problems.append(f"{node.name} differs from {module_name}.{node.name}")
    if defined == 0:
        problems.append("a save cell must define at least one function or class")
    return problems


def _source_lines(lines: list[str], node: ast.stmt) -> tuple[int, int]:
    """0-based ``[first, stop)`` of a statement's lines, its decorators included."""
    decorators = getattr(node, "decorator_list", [])
    first = min([node.lineno] + [d.lineno for d in decorators]) - 1
    return first, node.end_lineno


def synced_save_cell(source: str) -> str:
    """``source`` with every drifted definition replaced by the package's text.

    A definition equal to the package's (as a syntax tree) stays as it is, so
    that ``ruff format`` may lay it out for the page. For a method cell the
    ``@add_to_class`` line is kept; the opening of a class keeps the members
    it shows. Imports and blank lines stay.
    """
    first_line, _, body = source.partition("\n")
    marker = SAVE_LINE.fullmatch(first_line.rstrip())
    if marker is None:
        raise ValueError(f"not a save cell: {first_line!r}")
    module_name = "dmm_helpers." + marker["module"]
    module_path = Path(importlib.util.find_spec(module_name).origin)
    package_lines = module_path.read_text().splitlines()
    module_tree = ast.parse("\n".join(package_lines))
    top = {
        node.name: node for node in module_tree.body if isinstance(node, DEFINITIONS)
    }

    def text(node: ast.stmt, indent: int = 0) -> list[str]:
        first, stop = _source_lines(package_lines, node)
        block = "\n".join(package_lines[first:stop])
        return textwrap.dedent(block).splitlines() if indent == 0 else block.split("\n")

    cell_lines = body.split("\n")
    replaced: list[str] = []
    position = 0
    for node in ast.parse(body).body:
        if not isinstance(node, DEFINITIONS):
            continue
        alone = "\n".join(cell_lines[slice(*_source_lines(cell_lines, node))])
        if not save_cell_mismatches(f"{first_line}\n{textwrap.dedent(alone)}"):
            continue  # the same as the package's, whatever its layout
        first, stop = _source_lines(cell_lines, node)
        replaced += cell_lines[position:first]
        position = stop
        if not marker["cls"]:
            replaced += (
                text(top[node.name]) if node.name in top else cell_lines[first:stop]
            )
            continue
        package_class = top[marker["cls"]]
        members = {_member_name(member): member for member in package_class.body}
        if isinstance(node, ast.ClassDef):
            header_stop = package_class.body[0].lineno - 1
            if _is_docstring(package_class.body[0]):
                header_stop = package_class.body[0].end_lineno
            first_package, _ = _source_lines(package_lines, package_class)
            opening = package_lines[first_package:header_stop]
            for member in node.body[1:]:
                name = _member_name(member)
                if name in members:
                    opening += ["", *text(members[name], indent=4)]
            replaced += opening
        else:
            decorator = cell_lines[node.decorator_list[0].lineno - 1]
            method = members.get(node.name)
            if method is None:
                replaced += cell_lines[first:stop]
            else:
                replaced += [decorator, *text(method)]
    replaced += cell_lines[position:]
    return first_line + "\n" + "\n".join(replaced)


# --- the tests -------------------------------------------------------------------


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


def test_every_chapter_opens_with_the_same_set_up_cell():
    first_cells = {path.name: _code_cells(_read(path))[0] for path in NOTEBOOKS}
    reference = first_cells[NOTEBOOKS[0].name]
    different = sorted(name for name, cell in first_cells.items() if cell != reference)
    assert not different, (
        f"the first code cell of {different} differs from {NOTEBOOKS[0].name}'s"
    )


def colab_cell_problems(source: str) -> list[str]:
    """What is wrong with a chapter's first cell as the book's Colab set-up cell.

    It must install only where ``google.colab`` imports (``try: import
    google.colab`` / ``except ImportError: pass`` / ``else:`` install), from
    the repository of ``_config.yml``, run nothing else outside the guard,
    and never name torch (Colab's own build must stay).
    """
    tree = ast.parse(source)
    guards = [node for node in tree.body if isinstance(node, ast.Try)]
    if len(guards) != 1:
        return ["the cell needs exactly one try/except ImportError guard"]
    (guard,) = guards
    problems = []
    if not (
        len(guard.body) == 1
        and isinstance(guard.body[0], ast.Import)
        and [alias.name for alias in guard.body[0].names] == ["google.colab"]
    ):
        problems.append("the try block must hold only 'import google.colab'")
    handlers = guard.handlers
    if not (
        len(handlers) == 1
        and isinstance(handlers[0].type, ast.Name)
        and handlers[0].type.id == "ImportError"
        and [type(n) for n in handlers[0].body] == [ast.Pass]
    ):
        problems.append("outside Colab (except ImportError) the cell must do nothing")
    if guard.finalbody:
        problems.append("the guard must not have a finally block")
    installed = ast.Module(body=guard.orelse, type_ignores=[])
    calls = [node for node in ast.walk(installed) if isinstance(node, ast.Call)]
    strings = [
        node.value
        for node in ast.walk(installed)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]
    if not any(
        isinstance(call.func, ast.Attribute) and call.func.attr == "run"
        for call in calls
    ):
        problems.append("the else branch must run the installer")
    if REPOSITORY_URL not in strings:
        problems.append(f"the else branch must install from {REPOSITORY_URL}")
    if "install" not in strings or "pip" not in strings:
        problems.append("the else branch must install with pip")
    outside = [node for node in tree.body if node is not guard]
    if not all(isinstance(node, (ast.Import, ast.ImportFrom)) for node in outside):
        problems.append("nothing but imports may run outside the guard")
    names = [
        node.id if isinstance(node, ast.Name) else node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Name)
        or (isinstance(node, ast.Constant) and isinstance(node.value, str))
    ]
    names += [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    if any("torch" in name for name in names):
        problems.append("the cell must never name torch (Colab's build stays)")
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_cell_installs_only_on_colab(path):
    problems = colab_cell_problems(_code_cells(_read(path))[0])
    assert not problems, f"{path.name}: " + "; ".join(problems)


def test_the_colab_check_catches_a_bad_cell():
    cell = _code_cells(_read(NOTEBOOKS[0]))[0]
    assert colab_cell_problems(cell) == []
    unguarded = cell.replace(
        "except ImportError:\n    pass", "except ImportError:\n    import os"
    )
    assert unguarded != cell and colab_cell_problems(unguarded)
    assert colab_cell_problems(cell.replace(REPOSITORY_URL, "https://example.org/x"))
    torch_too = cell.replace('"--quiet"]', '"--quiet", "torch"]')
    assert torch_too != cell and colab_cell_problems(torch_too)
    assert colab_cell_problems(cell + "\nprint('hello')\n")


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
        assert not problems, (
            f"{path.name}: "
            + "; ".join(problems)
            + f" (after a deliberate change of the package: python "
            f"tests/test_notebooks.py --sync notebooks/{path.name})"
        )


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


def _method_cell(class_name: str, method_source: str) -> str:
    return (
        f"{SAVE_MARKER} dmm_helpers.dmm.DMM\n"
        f"@add_to_class({class_name})\n{textwrap.dedent(method_source)}"
    )


def test_save_check_catches_a_drifted_method():
    """Single methods (``@add_to_class``) and a class's opening are checked too."""
    dmm = importlib.import_module("dmm_helpers.dmm")
    source = inspect.getsource(dmm.DMM.model)
    assert save_cell_mismatches(_method_cell("DMM", source)) == []
    drifted = source.replace("annealing_factor)", "2 * annealing_factor)", 1)
    assert drifted != source
    assert save_cell_mismatches(_method_cell("DMM", drifted)) != []
    # The decorator must come first and name the class of the marker.
    assert save_cell_mismatches(_method_cell("DMMConfig", source)) != []
    bare = f"{SAVE_MARKER} dmm_helpers.dmm.DMM\n{textwrap.dedent(source)}"
    assert save_cell_mismatches(bare) != []
    # A docstring of several lines is dedented with its method, and still checked.
    guide = inspect.getsource(dmm.DMM.guide)
    assert save_cell_mismatches(_method_cell("DMM", guide)) == []
    reworded = guide.replace("structured", "structural", 1)
    assert reworded != guide
    assert save_cell_mismatches(_method_cell("DMM", reworded)) != []
    renamed = source.replace("def model(", "def modle(", 1)
    assert save_cell_mismatches(_method_cell("DMM", renamed)) != []
    # A method of the class is not a top-level function of the module ...
    as_function = f"{SAVE_MARKER} dmm_helpers.dmm\n{textwrap.dedent(source)}"
    assert save_cell_mismatches(as_function) != []
    # ... and the class marker needs a class.
    no_class = _method_cell("DMM", source).replace("dmm.DMM\n", "dmm.Nope\n", 1)
    assert save_cell_mismatches(no_class.replace("(DMM)", "(Nope)")) != []

    # The opening: the header, the docstring and the members it shows.
    whole = inspect.getsource(dmm.DMM)
    tree = ast.parse(whole).body[0]
    init = next(node for node in tree.body if _member_name(node) == "__init__")
    lines = whole.splitlines()
    opening = "\n".join(lines[: tree.body[0].end_lineno] + [""])
    opening += "\n".join(lines[init.lineno - 1 : init.end_lineno])
    cell = f"{SAVE_MARKER} dmm_helpers.dmm.DMM\n{opening}\n"
    assert save_cell_mismatches(cell) == []
    assert save_cell_mismatches(cell.replace("nn.Module", "object", 1)) != []
    assert save_cell_mismatches(cell.replace("self.config = config", "pass")) != []
    undocumented = cell.replace(ast.get_docstring(tree, clean=False), "", 1)
    assert save_cell_mismatches(undocumented) != []


def test_sync_restores_a_drifted_save_cell():
    dmm = importlib.import_module("dmm_helpers.dmm")
    source = inspect.getsource(dmm.DMM.model)
    drifted = _method_cell("DMM", source.replace("annealing_factor)", "2.0)", 1))
    assert save_cell_mismatches(drifted) != []
    assert save_cell_mismatches(synced_save_cell(drifted)) == []
    make_batch = inspect.getsource(
        importlib.import_module("dmm_helpers.data").make_batch
    )
    cell = f"{SAVE_MARKER} dmm_helpers.data\nimport torch\n\n\n{make_batch}"
    broken = cell.replace("lengths", "lens", 1)
    assert synced_save_cell(broken) == cell


# --- names ---------------------------------------------------------------------


def public_package_names() -> dict[str, str]:
    """Every public top-level name the package defines: ``{name: module}``.

    Definitions and assignments count, imports do not (an imported name is
    the exporting module's); names with a leading underscore are private.
    """
    names: dict[str, str] = {}
    for path in sorted((ROOT / "dmm_helpers").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            for name in _bound_names(node):
                if not name.startswith("_"):
                    names.setdefault(name, f"dmm_helpers.{path.stem}")
    return names


def _bound_names(node: ast.stmt) -> list[str]:
    """Names a top-level statement binds by definition or assignment (not import)."""
    if isinstance(node, DEFINITIONS):
        return [node.name]
    targets: list[ast.AST] = []
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.For, ast.AsyncFor)):
        targets = [node.target]
    elif isinstance(node, (ast.With, ast.AsyncWith)):
        targets = [item.optional_vars for item in node.items if item.optional_vars]
    return [
        name.id
        for target in targets
        for name in ast.walk(target)
        if isinstance(name, ast.Name) and isinstance(name.ctx, ast.Store)
    ]


def _is_method_cell_definition(node: ast.stmt) -> bool:
    return isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(
        isinstance(d, ast.Call)
        and getattr(d.func, "id", getattr(d.func, "attr", None)) == "add_to_class"
        for d in node.decorator_list
    )


def _top_level_statements(path: Path, *, save_cells: bool):
    """``(cell number, statement)`` of every top-level statement of the code cells."""
    for number, source in _numbered_code_cells(path):
        if source.startswith(SAVE_MARKER) and not save_cells:
            continue
        for node in _module_scope(ast.parse(source).body):
            yield number, node


def _module_scope(statements: list[ast.stmt]):
    """Every statement that runs in the module's scope: into ``if``, ``for``,
    ``while``, ``with`` and ``try`` blocks, not into functions and classes."""
    for node in statements:
        yield node
        if isinstance(node, DEFINITIONS):
            continue
        for field in ("body", "orelse", "finalbody"):
            yield from _module_scope(getattr(node, field, []))
        for handler in getattr(node, "handlers", []):
            yield from _module_scope(handler.body)


def shadowed_package_names(path: Path) -> list[str]:
    """Package names that the notebook defines outside its save cells."""
    public = public_package_names()
    found = []
    for number, node in _top_level_statements(path, save_cells=False):
        for name in _bound_names(node):
            if name in public:
                found.append(f"{name} (cell {number}; {public[name]})")
    return sorted(set(found))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_notebook_shadows_a_package_name(path):
    """A chapter that needs a package function imports it; it never writes a copy."""
    shadowed = shadowed_package_names(path)
    assert not shadowed, (
        f"{path.name} defines names that dmm_helpers exports (import them instead, "
        f"or show them in a save cell): {shadowed}"
    )


def test_the_shadow_check_catches_a_copy(tmp_path):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("def markdown_table(header, rows):\n    pass"),
        nbformat.v4.new_code_cell("for make_batch in range(3):\n    pass"),
        nbformat.v4.new_code_cell("x = {}\nx['load_jsb'] = 1"),
    ]
    path = tmp_path / "99_test.ipynb"
    nbformat.write(notebook, path)
    shadowed = shadowed_package_names(path)
    assert [entry.split()[0] for entry in shadowed] == ["make_batch", "markdown_table"]


def _kind(node: ast.stmt) -> str:
    if isinstance(node, ast.ClassDef):
        return "a class"
    if isinstance(node, DEFINITIONS):
        return "a function"
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return "an import"
    return "a value"


def rebound_names(path: Path) -> list[str]:
    """Top-level names of a chapter that are bound as two kinds of thing.

    Kinds: a function, a class, an import, a value (assignments, loop and
    ``with`` targets). Methods added with ``@add_to_class`` belong to their
    class, not to the chapter's names.
    """
    kinds: dict[str, dict[str, int]] = {}
    for number, node in _top_level_statements(path, save_cells=True):
        if _is_method_cell_definition(node):
            continue
        names = _bound_names(node)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [(alias.asname or alias.name).split(".")[0] for alias in node.names]
        for name in names:
            kinds.setdefault(name, {}).setdefault(_kind(node), number)
    return sorted(
        f"{name}: " + ", ".join(f"{kind} (cell {cell})" for kind, cell in seen.items())
        for name, seen in kinds.items()
        if len(seen) > 1 and name not in dir(builtins)
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_name_keeps_its_kind_within_a_chapter(path):
    """No chapter rebinds a function's name to a value, a value's to a class, ..."""
    rebound = rebound_names(path)
    assert not rebound, f"{path.name} gives names two meanings: {rebound}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_code_fits_the_page(path):
    """Every code line within the line length of pyproject.toml (ruff's)."""
    long_lines = [
        f"cell {number}, line {index + 1}: {len(line)} characters"
        for number, source in _numbered_code_cells(path)
        for index, line in enumerate(source.splitlines())
        if len(line) > LINE_LENGTH
    ]
    assert not long_lines, f"{path.name}: lines longer than {LINE_LENGTH}: {long_lines}"


# --- the parts of a chapter ----------------------------------------------------------

EXERCISE = re.compile(r"```\{exercise\}[^\n]*\n:label: (ex-[\w-]+)")
# A solution is one directive, or (its code run with the chapter, its findings
# computed) sphinx-exercise's gated pair solution-start ... solution-end.
SOLUTION = re.compile(
    r"```\{solution(?:-start)?\} (ex-[\w-]+)\n((?::[\w-]+:[^\n]*\n)*)"
)
SOLUTION_END = "```{solution-end}"


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
    gated = text.count("```{solution-start}")
    assert gated == text.count(SOLUTION_END), (
        f"{path.name}: every solution-start needs its solution-end"
    )
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


def _sync(paths: list[str]) -> None:
    """Copy the package's current text into the save cells of the given notebooks."""
    for name in paths:
        path = Path(name)
        nb = _read(path)
        changed = 0
        for cell in nb.cells:
            if cell.cell_type == "code" and cell.source.startswith(SAVE_MARKER):
                synced = synced_save_cell(cell.source)
                if synced != cell.source:
                    cell.source = synced
                    changed += 1
        if changed:
            nbformat.write(nb, path)
        print(f"{path}: {changed} save cells synced")


if __name__ == "__main__":
    if sys.argv[1:2] != ["--sync"] or len(sys.argv) < 3:
        sys.exit("usage: python tests/test_notebooks.py --sync NOTEBOOK...")
    _sync(sys.argv[2:])


def test_gated_solutions_count_as_solutions():
    text = (
        "```{exercise}\n:label: ex-99-a\nQ?\n```\n\n"
        "```{solution-start} ex-99-a\n:class: dropdown\n```\nA.\n```{solution-end}\n```"
    )
    assert EXERCISE.findall(text) == ["ex-99-a"]
    assert SOLUTION.findall(text) == [("ex-99-a", ":class: dropdown\n")]
    assert SOLUTION.findall(text.replace("solution-start", "solutionstart")) == []
