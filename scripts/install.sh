#!/usr/bin/env bash
# Install modelshield into the current Python environment.
#   bash scripts/install.sh          # the package and its CLI
#   bash scripts/install.sh test     # ... plus the test tools
#   bash scripts/install.sh peers    # ... plus ART, torchattacks and foolbox for benchmarks
# torch==2.13.0 is installed first when absent (the CPU wheel), and constraints.txt pins it so
# that no other package can replace it with a multi-gigabyte CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
have=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
if [ "$have" != "2.13.0" ]; then
  "$PY" -m pip install -q -c constraints.txt "torch==2.13.0"
fi
extras="${1:-}"
spec="."
[ -n "$extras" ] && spec=".[$extras]"
"$PY" -m pip install -q -c constraints.txt -e "$spec"
"$PY" -c 'import torch, sys; v = torch.__version__.split("+")[0]; sys.exit(0 if v == "2.13.0" else f"torch {v} replaced 2.13.0")'
