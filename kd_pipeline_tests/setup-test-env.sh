#!/usr/bin/env bash
# Everything the tests need, into .venv (README, quick start, command 2):
# - headless Chromium for the UI test (marker `browser`): Debian's `chromium` package, as root
#   or through sudo, unless `chromium` (or another name test_ui.py looks for) is on PATH or
#   KD_PIPELINE_CHROMIUM names a binary;
# - Debian's `postgresql` server binaries for the loopback PostgreSQL of the lake tests
#   (kd_pipeline_tests/servers.py starts its own cluster; the package's default cluster is not
#   used), unless /usr/lib/postgresql/*/bin/initdb exists;
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

have_postgres() {
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

# apt_install WHY PACKAGE...: install Debian packages as root or through sudo; on failure print
# apt's output and one line saying what the packages are for.
apt_install() {
  local why="$1" as_root="" apt_log
  shift
  if [ "$(id -u)" -ne 0 ]; then as_root="sudo"; fi
  apt_log="$(mktemp)"
  if ! { $as_root apt-get update -qq &&
    $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; } >"$apt_log" 2>&1
  then
    cat "$apt_log" >&2
    echo "setup-test-env.sh: could not install Debian's $1 ($why)" >&2
    exit 1
  fi
  rm -f "$apt_log"
}

if ! have_chromium; then
  apt_install "needed by the UI test; install Chromium or set KD_PIPELINE_CHROMIUM to a \
Chrome/Chromium binary" chromium fonts-liberation fonts-dejavu-core
fi

if ! have_postgres; then
  apt_install "the lake tests' PostgreSQL server; or install any PostgreSQL server under \
/usr/lib/postgresql/<version>/bin" postgresql
fi

python3 -m venv .venv
.venv/bin/pip install -q -c "$constraints" -e '.[dev,consumers]'
.venv/bin/pip install -q --no-deps -c "$constraints" pylate fastkmeans light-splade beir
