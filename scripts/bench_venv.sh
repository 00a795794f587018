#!/usr/bin/env bash
# Makes .venv-bench (python3 venv with scripts/requirements-bench.txt: faiss-cpu, numpy,
# safetensors) usable; quick when it already is. Run from the repository root.
set -euo pipefail
[ -x .venv-bench/bin/python ] || python3 -m venv .venv-bench
.venv-bench/bin/python -c "import faiss, numpy, safetensors" 2>/dev/null ||
  .venv-bench/bin/pip install --quiet -r scripts/requirements-bench.txt
