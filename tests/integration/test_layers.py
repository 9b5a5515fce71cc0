"""The package's layering: import-linter's contract (pyproject.toml) and no private cross-imports.

Layers, highest first: cli > serve > assess > experiments > defenses > attacks > targets > zoo >
models > data > secure; each imports only those below it. A module may import a private
(underscore) module only inside the package that owns it; whatever another package needs is public.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"


def _private_cross_imports() -> list[str]:
    bad = []
    for path in sorted((SRC / "modelshield").rglob("*.py")):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] != "modelshield":
                    continue
                for i, part in enumerate(parts):
                    if part.startswith("_") and not part.startswith("__"):
                        owner = ".".join(parts[:i])
                        if package != owner and not package.startswith(owner + "."):
                            private = ".".join(parts[: i + 1])
                            bad.append(f"{path.relative_to(REPO)}:{node.lineno} imports {private}")
                        break
    return bad


def test_no_module_imports_another_packages_private_module() -> None:
    bad = _private_cross_imports()
    assert not bad, "make these public (or move them) instead: " + "; ".join(bad)


def test_the_layers_contract_holds() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(exe).exists():
        pytest.skip("import-linter is not installed (it is in the 'test' extra)")
    result = subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "KEPT" in result.stdout
