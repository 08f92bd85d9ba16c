#!/usr/bin/env bash
# Create .venv with the CPU build of torch and vitpose-hf (editable, with test extras). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
step() { printf '\n==> %s\n' "$*"; }
if [ -x .venv/bin/python ]; then
    step "using the existing virtual environment .venv"
else
    step "creating the virtual environment .venv ($("$PYTHON" --version 2>&1))"
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
step "upgrading pip"
python -m pip install -q --upgrade pip
# the CPU wheel first: a bare `torch` requirement would pull a multi-GB CUDA build
step "installing torch 2.13.0 (CPU build, about 200 MB; this is the slow step)"
python -m pip install --progress-bar on "torch==2.13.0" 2>&1 | grep -E "^(Collecting|Downloading|Installing|Successfully)" || true
step "installing vitpose-hf (editable) with the test extras"
python -m pip install --progress-bar on -e ".[test]" 2>&1 | grep -E "^(Collecting|Installing|Successfully)" || true
python -c "import vitpose_hf" || { echo "error: vitpose_hf does not import; rerun without the filter: pip install -e '.[test]'"; exit 1; }
# xtcocotools' binary wheel was built against numpy 1.x and fails to import beside numpy 2: rebuild it here
if ! python -c "import xtcocotools.coco" 2>/dev/null; then
    step "rebuilding xtcocotools against this numpy (its wheel was built for numpy 1.x)"
    python -m pip install -q cython setuptools wheel
    python -m pip install -q --no-build-isolation --no-binary xtcocotools --force-reinstall --no-deps xtcocotools
fi
step "done: activate with '. .venv/bin/activate', then run 'vitpose-hf --help'"
if [ ! -d "${VITPOSE_HF_SHARED_DATA:-../shared/data}" ]; then
    echo "note: the shared test photos (../shared/data or \$VITPOSE_HF_SHARED_DATA) are missing: the tests that need them skip"
fi
