"""Installable from nothing: every module imports, and every third-party import is declared.

`.ci/run` installs the package into a fresh virtual environment with the README's command, so a
module importing an undeclared package fails ``test_every_module_imports`` there. Imports made
lazily inside functions (PyYAML was one: ``attack evasion --attack tabular`` crashed on a clean
install) are not executed by importing the module, so ``test_every_import_is_declared`` reads
every ``import`` statement of the source tree and requires its distribution in
``[project] dependencies``, or in an optional extra when the import is made lazily inside a
function (so ``import modelshield...`` works without the extra, and the feature names the extra
to install). The ``test`` extra must hold every other extra (but the benchmark-only
``peers`` and ``scanners``), so CI tests them.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as md
import pkgutil
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

import modelshield

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src" / "modelshield"

# Import name -> distribution, for packages whose names differ, so the message names what to
# declare even when the package is not installed at all.
KNOWN_DISTRIBUTIONS = {
    "yaml": "pyyaml",
    "sklearn": "scikit-learn",
    "jinja2": "jinja2",
    "PIL": "pillow",
    "skops": "skops",
}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(requirements: list[str]) -> set[str]:
    names = set()
    for req in requirements:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
        assert match, f"unparsable requirement {req!r}"
        names.add(_canonical(match.group(1)))
    return names


def _project() -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return project


def _declared() -> set[str]:
    return _names(_project()["dependencies"])


BENCHMARK_ONLY = ("test", "peers", "scanners")  # peer libraries for benchmarks/, never imported by src


def _extras() -> dict[str, set[str]]:
    return {k: _names(v) for k, v in _project().get("optional-dependencies", {}).items()}


def _imported_top_levels() -> dict[str, list[tuple[str, bool]]]:
    """Top-level module name -> ('file:line', lazy) of each import anywhere in src.

    ``lazy`` is True for an import inside a function body (run only when the function is) or under
    ``if TYPE_CHECKING:`` (never run).
    """
    found: dict[str, list[tuple[str, bool]]] = {}
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        lazy_nodes = {
            id(inner)
            for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
            for inner in ast.walk(fn)
        } | {
            id(inner)
            for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
            for stmt in block.body for inner in ast.walk(stmt)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                where = f"{path.relative_to(REPO)}:{node.lineno}"
                found.setdefault(top, []).append((where, id(node) in lazy_nodes))
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _all_module_names() -> list[str]:
    return sorted(
        info.name
        for info in pkgutil.walk_packages(modelshield.__path__, prefix="modelshield.")
    )


def test_module_walk_sees_the_whole_package() -> None:
    """Every .py file under src/modelshield is a module the import test covers."""
    from_files = set()
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        from_files.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    assert from_files - {"modelshield"} == set(_all_module_names())


@pytest.mark.parametrize("name", _all_module_names())
def test_every_module_imports(name: str) -> None:
    importlib.import_module(name)


def test_every_import_is_declared() -> None:
    declared = _declared()
    optional = set().union(*(v for k, v in _extras().items() if k not in BENCHMARK_ONLY))
    mapping = md.packages_distributions()
    undeclared: list[str] = []
    for top, places in sorted(_imported_top_levels().items()):
        if top in sys.stdlib_module_names or top in ("modelshield", "__future__"):
            continue
        dists = {_canonical(d) for d in mapping.get(top, [])}
        if not dists and top in KNOWN_DISTRIBUTIONS:
            dists = {KNOWN_DISTRIBUTIONS[top]}
        what = ", ".join(sorted(dists)) or f"(not installed: no distribution provides {top!r})"
        if dists & declared:
            continue
        if dists & optional:
            eager = [where for where, lazy in places if not lazy]
            if eager:
                undeclared.append(f"{top} -> {what} (an optional extra) imported at module level at "
                                  f"{eager[0]}; import it inside the function that needs it")
            continue
        undeclared.append(f"{top} -> {what} imported at {places[0][0]}")
    assert not undeclared, (
        "imports whose distribution is not in [project] dependencies of pyproject.toml "
        "(declare them, or put them in an optional extra and import them lazily): "
        + "; ".join(undeclared)
    )


def test_the_test_extra_installs_every_optional_feature() -> None:
    """CI installs '.[test]': every feature extra (all but the benchmark-only ones) must be in it."""
    extras = _extras()
    missing = {
        name: sorted(deps - extras.get("test", set()))
        for name, deps in extras.items()
        if name not in BENCHMARK_ONLY and deps - extras.get("test", set())
    }
    assert not missing, f"add these to the 'test' extra in pyproject.toml: {missing}"


def test_declared_dependencies_are_installed() -> None:
    """The README's install command installed every declared dependency (no silent skip)."""
    missing = []
    for name in _declared():
        try:
            md.distribution(name)
        except md.PackageNotFoundError:
            missing.append(name)
    assert not missing, f"declared but not installed: {missing}"


PACKAGE_DATA = ("modelshield/data/embedded/Training_Dataset.arff.gz",
                "modelshield/data/embedded/SMSSpamCollection.gz",
                "modelshield/data/embedded/SMSSpamCollection-readme.txt",
                "modelshield/data/embedded/ATTRIBUTION.txt",
                "modelshield/data/phishing_constraints.yaml",
                "modelshield/py.typed")


def _can_build_wheel_offline() -> bool:
    """setuptools builds wheels itself from 70.1; before that it needs the `wheel` package."""
    import importlib.util

    import setuptools

    major, minor = (int(p) for p in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.mark.slow  # a few seconds: copies the project and builds it
def test_a_build_of_the_repository_ships_the_package_data(tmp_path: Path) -> None:
    """The wheel (or, where setuptools cannot build one offline, its build_py stage, which is what
    fills the wheel) holds the embedded data sets, their credits and the other package data."""
    import shutil
    import subprocess
    import zipfile

    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copy(REPO / "pyproject.toml", proj)
    shutil.copy(REPO / "README.md", proj)
    shutil.copytree(REPO / "src", proj / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    if _can_build_wheel_offline():
        cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
               "--no-index", "-w", str(tmp_path / "dist"), str(proj)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=300)
        [wheel] = (tmp_path / "dist").glob("modelshield-*.whl")
        names = set(zipfile.ZipFile(wheel).namelist())
    else:
        cmd = [sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "build_py",
               "--build-lib", str(tmp_path / "lib")]
        subprocess.run(cmd, check=True, capture_output=True, timeout=300, cwd=proj)
        names = {p.relative_to(tmp_path / "lib").as_posix() for p in (tmp_path / "lib").rglob("*")}
    missing = [f for f in PACKAGE_DATA if f not in names]
    assert not missing, f"not in the build: {missing}; add them to [tool.setuptools.package-data]"
