"""The package layout: every module imports on its own in a fresh interpreter, no import cycles (module-level or
hidden in a function), and the old flat module names still import with a FutureWarning naming the new home."""

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FOLDERS = {
    "sdtoolkit": ROOT / "sdtoolkit",
    "sdtoolkit.trainers": ROOT / "trainers",
    "sdtoolkit.pipelines": ROOT / "pipelines",
}


def _modules() -> dict[str, pathlib.Path]:
    modules = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if parts and parts[0] in ("trainers", "pipelines") and package == "sdtoolkit":
                continue
            modules[".".join([package, *parts])] = path
    return modules


def _resolve(name: str, module: str, is_package: bool, level: int) -> str:
    if level == 0:
        return name
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def import_graph() -> dict[str, set[str]]:
    """Edges module -> sdtoolkit module it imports, at any depth of the file (function-level imports included).
    `from pkg import name` counts as importing `pkg.name` when that is a module, else `pkg`."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node.module or "", module, is_package, node.level)
                for alias in node.names:
                    targets.append(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != module:
                    graph[module].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a list of nodes (first == last), or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_cycle_check_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_module_imports_in_a_fresh_interpreter():
    """Every module of the tree imports (no stale import of a moved module: FutureWarning is an error here)."""
    # the nerfstudio method and model subclass nerfstudio's classes: they import only where nerfstudio's trainer
    # does (README set-up command 3; tests/test_nerfstudio.py imports them there)
    optional = ("sdtoolkit.nerfstudio_plugin.method", "sdtoolkit.nerfstudio_plugin.model")
    names = sorted(m for m in _modules() if not m.endswith("__main__") and m not in optional)
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    result = subprocess.run(
        [sys.executable, "-W", "error::FutureWarning", "-c", code, *names], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize(
    ("old", "new"),
    [("sdtoolkit.denoiser", "sdtoolkit.core.denoiser"), ("sdtoolkit.training", "sdtoolkit.distill.loop")],
)
def test_old_module_names_warn_and_alias(old, new):
    code = (
        "import warnings, importlib\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        f"    old = importlib.import_module({old!r})\n"
        f"assert old is importlib.import_module({new!r}), old\n"
        f"assert any({new!r} in str(x.message) and x.category is FutureWarning for x in w), "
        "[str(x.message) for x in w]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
