"""The package's shape: modules of one job, small enough to read, whose imports say at the top what
they depend on."""
import ast

from lib import REPO

LIB = REPO / "lib"
#: about as long as a module should be
MODULE_LINES = 450
#: the modules still longer, each held to the length it has (to be split, not grown)
LONGER_STILL: dict[str, int] = {}


def test_no_module_grows_past_its_length():
    over = {}
    for path in sorted(LIB.rglob("*.py")):
        name, lines = str(path.relative_to(REPO)), len(path.read_text().splitlines())
        if lines > LONGER_STILL.get(name, MODULE_LINES):
            over[name] = lines
    assert not over, f"over {MODULE_LINES} lines (or the length LONGER_STILL holds it to): {over}"


def test_imports_from_lib_are_at_the_top_of_the_module():
    """A function that imports from lib hides a dependency (or a cycle); TYPE_CHECKING blocks are the exception."""
    found = []
    for path in sorted(LIB.rglob("*.py")):
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found += [f"{path.relative_to(REPO)}:{n.lineno}" for n in ast.walk(fn)
                          if isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "lib"]
    assert not found, found
