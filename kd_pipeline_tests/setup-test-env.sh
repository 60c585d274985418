#!/usr/bin/env bash
# Everything the tests need, into .venv (README, quick start, command 2):
# - headless Chromium for the UI test (marker `browser`): Debian's `chromium` package, as root
#   or through sudo, unless `chromium` (or another name test_ui.py looks for) is on PATH or
#   KD_PIPELINE_CHROMIUM names a binary;
# - the project with its development tools;
# - the KD trainers the tests train on the exports, at the versions in
#   consumers-constraints.txt (CPU torch: pip takes the CPU wheel where a find-links or index
#   offers one; on a PyPI-only Linux machine set PIP_EXTRA_INDEX_URL to PyTorch's CPU index,
#   https://download.pytorch.org/whl/cpu, or pip takes the CUDA build).
# Safe to run again: what is installed stays.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
constraints=kd_pipeline_tests/consumers-constraints.txt

have_chromium() {
  [ -n "${KD_PIPELINE_CHROMIUM:-}" ] && return 0
  local name
  for name in chromium chromium-browser google-chrome google-chrome-stable; do
    command -v "$name" >/dev/null 2>&1 && return 0
  done
  return 1
}

if ! have_chromium; then
  as_root=""
  if [ "$(id -u)" -ne 0 ]; then as_root="sudo"; fi
  apt_log="$(mktemp)"
  if ! { $as_root apt-get update -qq &&
    $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      chromium fonts-liberation fonts-dejavu-core; } >"$apt_log" 2>&1; then
    cat "$apt_log" >&2
    echo "setup-test-env.sh: could not install Debian's chromium (needed by the UI test);" \
      "install Chromium or set KD_PIPELINE_CHROMIUM to a Chrome/Chromium binary" >&2
    exit 1
  fi
  rm -f "$apt_log"
fi

python3 -m venv .venv
.venv/bin/pip install -q -c "$constraints" -e '.[dev,consumers]'
.venv/bin/pip install -q --no-deps -c "$constraints" pylate fastkmeans light-splade beir
