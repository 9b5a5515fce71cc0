"""Start-up cost: commands that run no model must not import torch (the scanner's cold start is
part of its speed), and a closed pipe ends a command quietly instead of as a crash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

_CHECK = """
import json, sys
{body}
print(json.dumps(sorted(m for m in ("torch", "numpy", "sklearn", "modelshield.attacks",
                                     "modelshield.models") if m in sys.modules)))
"""


def _heavy_modules(body: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", _CHECK.format(body=body)], capture_output=True, text=True,
                         timeout=120, check=True)
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("body", [
    "import modelshield",
    "import modelshield.cli.app",
    "from modelshield.secure.scan import scan_path",
    "import modelshield.cli.scan, modelshield.cli.secure, modelshield.cli.audit",
])
def test_light_imports_stay_light(body: str) -> None:
    assert _heavy_modules(body) == []


def test_lazy_names_resolve() -> None:
    import modelshield

    assert modelshield.PGD.__name__ == "PGD" and callable(modelshield.as_model)
    assert {"PGD", "as_model", "ConfigError"} <= set(dir(modelshield))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = modelshield.nope  # type: ignore[attr-defined]


def test_scan_command_runs_without_torch(tmp_path: Path) -> None:
    """`modelshield scan` imports no ML framework: its cold start is the scanner's own."""
    f = tmp_path / "x.bin"
    f.write_bytes(b"\x80\x04K\x01.")  # pickle.dumps(1)
    code = ("import sys; from modelshield.cli.app import main; sys.argv = ['modelshield', 'scan', "
            f"{str(f)!r}]\ntry:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', code)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "NO-TORCH 0", out.stdout + out.stderr


def test_closed_pipe_is_not_a_crash(tmp_path: Path) -> None:
    for i in range(400):
        (tmp_path / f"m{i}.bin").write_bytes(b"\x80\x04K\x01.")
    exe = Path(sys.executable).parent / "modelshield"
    with subprocess.Popen([str(exe), "scan", str(tmp_path), "--json"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE,
                          env={**os.environ, "MODELSHIELD_CACHE": str(tmp_path / "c")}) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.read(100)
        proc.stdout.close()  # the reader goes away, as `| head -c 100` does
        err = proc.stderr.read().decode()
        proc.wait(timeout=120)
    assert "internal error" not in err and "Traceback" not in err, err
    assert not (tmp_path / "c" / "crash").exists()
