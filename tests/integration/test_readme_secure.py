"""The README's "Secure the pipeline" commands, run as written (issue #17).

Read from README.md between ``<!-- secure-examples -->`` and ``<!-- /secure-examples -->``; after
``python examples/make_own_models.py`` they run one by one in a shell from the repository root,
with ``examples/own`` pointing into a temporary folder, and each must exit 0. Then the results are
checked: the safetensors copy, the signature bundle, the manifest, the audit log (the scan
recorded, verified), and the report's supply-chain section (clean scan, verified signature, the
scan record as provenance).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- secure-examples -->", "<!-- /secure-examples -->"
OWN = re.compile(r"examples/own(?=/|\s|$)")


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    assert BEGIN in text and END in text, "README.md lost its secure-examples markers"
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    body = block.split("```bash", 1)[1].rsplit("```", 1)[0]
    commands, current = [], ""
    for line in body.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        current += line.rstrip("\\").rstrip() + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            commands.append(current.strip())
            current = ""
    return commands


def shell(command: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1"}
    for name in ("PYTHONPATH", "MODELSHIELD_AUDIT_LOG", "MODELSHIELD_TRUST_POLICY"):
        env.pop(name, None)
    return subprocess.run(["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600, check=False)


def test_the_block_uses_every_secure_command() -> None:
    words = {m.group(1) for c in readme_commands() for m in [re.search(r"\bmodelshield (\w+)", c)] if m}
    assert {"scan", "keygen", "sign", "verify", "manifest", "audit", "assess"} <= words


@pytest.mark.slow
def test_secure_commands_run_as_written(tmp_path: Path) -> None:
    own = tmp_path / "own"
    made = shell(f"python examples/make_own_models.py --out {own}")
    assert made.returncode == 0, made.stderr[-2000:]
    for command in readme_commands():
        done = shell(OWN.sub(str(own), command))
        assert done.returncode == 0, f"{command}\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}"
    assert (own / "digits_mlp.safetensors").read_bytes()[8:9] == b"{"
    assert (own / "digits_mlp.pt.sig").is_file()
    assert json.loads((own / "tumours.manifest.json").read_text())["root"]
    report = json.loads((own / "reports" / "supply-chain" / "report.json").read_text())
    section = next(s for s in report["sections"] if s["id"] == "supply-chain")
    assert section["metrics"]["scan"]["blocked"] is False
    assert section["headline"]["supply_chain_signature_verified"] == 1
    assert section["severity"] in ("none", "low")
