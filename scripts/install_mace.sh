#!/usr/bin/env bash
# Install the optional MACE backend (mace-torch 0.3.16) into the active environment without
# touching torch. mace-torch pins e3nn==0.4.4, which does not import on torch 2.13, so it is
# installed with --no-deps after piwsl's "mace" extra (e3nn 0.6.0 and mace's runtime deps).
# Usage: scripts/install_mace.sh   (from any directory; uses the repository's constraints.txt)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
python -m pip install --quiet -c "$ROOT/constraints.txt" -e "$ROOT[mace]"
python -m pip install --quiet -c "$ROOT/constraints.txt" --no-deps mace-torch==0.3.16
python - <<'PY'
import torch
import mace  # noqa: F401  (before e3nn)
import e3nn
from mace import modules  # noqa: F401
print(f"mace-torch {mace.__version__}, e3nn {e3nn.__version__}, torch {torch.__version__}")
PY
