#!/usr/bin/env bash
# Create .venv with the CPU build of torch and vitpose-hf (editable, with test extras). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# the CPU wheel first: a bare `torch` requirement would pull a multi-GB CUDA build
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test]"
# xtcocotools' binary wheel was built against numpy 1.x and fails to import beside numpy 2: rebuild it here
if ! python -c "import xtcocotools.coco" 2>/dev/null; then
    python -m pip install -q cython setuptools wheel
    python -m pip install -q --no-build-isolation --no-binary xtcocotools --force-reinstall --no-deps xtcocotools
fi
