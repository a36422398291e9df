"""The codebase's shape (README, Architecture): the library never imports the command-line layer,
its modules import each other without cycles, and ruff is clean with the committed configuration."""
import ast
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


def _library_imports() -> dict[str, set[str]]:
    """{module: imported names} over emocap_jax, every import (also those inside functions)."""
    modules = {}
    for path in (REPO_ROOT / "emocap_jax").rglob("*.py"):
        name = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
        is_package = name.endswith(".__init__")
        name = name.removesuffix(".__init__")
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = name.split(".")
                    keep = len(parts) - node.level + (1 if is_package else 0)
                    base = ".".join(parts[:keep] + ([base] if base else []))
                imported.add(base)
                imported.update(f"{base}.{a.name}" for a in node.names)
        modules[name] = imported
    return modules


def test_the_library_never_imports_data_prep():
    offenders = sorted(f"{module} imports {name}"
                       for module, names in _library_imports().items() for name in names
                       if name == "data_prep" or name.startswith("data_prep."))
    assert not offenders, offenders


def test_the_library_has_no_import_cycle():
    imports = _library_imports()
    edges = {}
    for module, names in imports.items():
        targets = set()
        for name in names:
            while name and name not in imports:  # `from a.b import c` where c is a function
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        edges[module] = targets
    # Depth-first search; a grey module reached again closes a cycle.
    state, stack, cycles = {}, [], []

    def visit(module):
        state[module] = "grey"
        stack.append(module)
        for target in sorted(edges[module]):
            if state.get(target) == "grey":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = "black"

    for module in sorted(edges):
        if module not in state:
            visit(module)
    assert not cycles, [" -> ".join(c) for c in cycles]


def test_ruff_is_clean_with_the_committed_configuration():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."],
                            cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_imports_inside_functions_say_why():
    """Imports sit at the top of the library's modules. The few that stay inside a function (an
    optional dependency, a CLI that answers --help before loading JAX, main's huge-pages re-exec)
    carry a comment saying why: on their line, or on the line above their group of imports."""
    undocumented = []
    for path in sorted((REPO_ROOT / "emocap_jax").rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for sub in ast.walk(node):
                if not isinstance(sub, (ast.Import, ast.ImportFrom)):
                    continue
                row = sub.lineno - 1
                if "#" in lines[row]:
                    continue
                while row > 0 and (not lines[row - 1].strip() or lines[row - 1].strip()
                                   .startswith(("import ", "from "))):
                    row -= 1
                if not lines[row - 1].strip().startswith("#"):
                    undocumented.append(f"{path.relative_to(REPO_ROOT)}:{sub.lineno}")
    assert not undocumented, undocumented



# Runs the module named by its first argument with the rest as its command line, and says on
# stderr as it exits whether JAX was imported.
_JAX_IMPORTED_AT_EXIT = """
import atexit, runpy, sys
atexit.register(lambda: print("jax imported:", "jax" in sys.modules, file=sys.stderr))
module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("args, status", [(["--help"], 0), (["--list"], 0),
                                          (["--protocl", "zero_shot"], 2)])
def test_evaluate_answers_help_list_and_argument_errors_before_loading_jax(args, status):
    """README (Architecture) and emocap_jax/evaluate/cli.py: `python -m emocap_jax.evaluate`
    answers --help, --list and argument errors before it loads JAX, at once rather than after
    the seconds JAX takes to import."""
    result = subprocess.run([sys.executable, "-c", _JAX_IMPORTED_AT_EXIT, "emocap_jax.evaluate",
                             *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == status, result.stderr[-2000:]
    assert "jax imported: False" in result.stderr, result.stderr[-2000:]
