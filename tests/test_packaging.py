"""Packaging: what `pip install .` brings is what atop_core imports, JupyterLab stays out of it,
and the environment files say the same as pyproject.toml. (scripts/check_wheel.sh, run by CI,
installs the wheel into a fresh environment and imports it there.)"""

import ast
import functools
import re
import sys
import tomllib
from collections.abc import Iterator
from importlib.metadata import packages_distributions
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# The library's entry points: `import atop_core`, `import atop_core.attacks`, `python -m atop_core`.
ENTRY_POINTS = ("atop_core", "atop_core.attacks", "atop_core.__main__")
LAB_ONLY = {"jupyterlab", "jupyterlab-server", "jupyter-server", "notebook", "jupyter"}


def _names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def _extra(name: str) -> set[str]:
    """An extra's distributions, with those of the project's extras it names."""
    names = set()
    for line in PROJECT["optional-dependencies"][name]:
        requirement = Requirement(line)
        if canonicalize_name(requirement.name) == canonicalize_name(PROJECT["name"]):
            names |= set().union(*map(_extra, requirement.extras))
        else:
            names.add(canonicalize_name(requirement.name))
    return names


def _modules() -> dict[str, Path]:
    paths = sorted((ROOT / "atop_core").rglob("*.py"))
    return {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
            for p in paths}  # fmt: skip


def _on_import(tree: ast.AST) -> Iterator[ast.AST]:
    """The nodes that importing a module runs: not function bodies, not `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_on_import(child)])
            continue
        yield node
        yield from _on_import(node)


def _imports(path: Path, modules: dict[str, Path], on_import: bool) -> tuple[set, set]:
    """(third-party top-level names, atop_core modules) a module imports: on import (`on_import`),
    or anywhere in it."""
    tree = ast.parse(path.read_text())
    third, internal = set(), set()
    for node in _on_import(tree) if on_import else ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "atop_core":
                internal |= {name} & modules.keys()
            elif name.split(".")[0] not in sys.stdlib_module_names:
                third.add(name.split(".")[0])
    return third, internal


@functools.cache
def _installed() -> dict[str, list[str]]:
    return packages_distributions()


def _distributions(names: set[str]) -> dict[str, set[str]]:
    installed = _installed()
    return {n: {canonicalize_name(d) for d in installed.get(n, [f"<{n}: not installed>"])}
            for n in names}  # fmt: skip


def test_every_import_of_the_library_is_a_declared_dependency():
    """Anything atop_core imports is declared; what importing its entry points runs needs
    `pip install .` alone. Optional parts (the notebooks' explorer and jupyter, or an import
    inside a function) may need an extra."""
    core = _names(PROJECT["dependencies"])
    declared = core.union(*map(_extra, PROJECT["optional-dependencies"]))
    modules = _modules()
    for name, path in modules.items():
        for module, dists in _distributions(_imports(path, modules, False)[0]).items():
            assert dists & declared, f"{name} imports {module}: in no dependency or extra"
    on_import = {name: _imports(path, modules, True) for name, path in modules.items()}
    reached, todo = set(), list(ENTRY_POINTS)
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo += on_import[name][1] | {p for p in modules if name.startswith(f"{p}.")}
    assert "atop_core.attacks.library" in reached  # torchattacks: a dependency, no extra
    for name in sorted(reached):
        for module, dists in _distributions(on_import[name][0]).items():
            assert dists & core, f"{name}, run by importing {ENTRY_POINTS}, imports {module}"


def test_torchattacks_is_a_dependency_and_jupyterlab_is_not():
    assert "torchattacks==3.5.1" in PROJECT["dependencies"]  # the version every record names
    for extra in PROJECT["optional-dependencies"]:
        assert not _extra(extra) & LAB_ONLY, f"extra {extra}: JupyterLab needs requests>=2.31"
    assert not _names(PROJECT["dependencies"]) & LAB_ONLY
    lines = (ROOT / "requirements-lab.txt").read_text().splitlines()
    lab = _names([line.split("#")[0] for line in lines if line.split("#")[0].strip()])
    assert "jupyterlab" in lab and not lab & {"torch", "torchattacks", "atop-core"}


def test_the_environment_files_say_what_pyproject_and_bootstrap_say():
    bootstrap = (ROOT / "scripts" / "bootstrap_env.sh").read_text()
    pins = [p.strip('"') for p in re.search(r"ATOP_TORCH_PINS=\(([^)]*)\)", bootstrap)[1].split()]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == [*pins, "-e .[dev]"]  # the rest comes from pyproject.toml itself
    lab = yaml.safe_load((ROOT / "environment-lab.yml").read_text())
    assert {"pip": ["-r requirements-lab.txt"]} in lab["dependencies"]
    assert "bash scripts/check_wheel.sh" in (ROOT / ".ci" / "run").read_text()
