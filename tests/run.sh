#!/usr/bin/env bash
# Install everything the test suite needs, then run it:
#   - Debian packages when missing: postgresql (the real PostgreSQL backend
#     tests), chromium (the dashboard in a real browser), iproute2 (the AWS
#     rehearsal's network namespaces), strace (tests/test_fsync_order.py
#     proves an ack leaves only after its reading's fsync);
#   - a virtualenv .venv with sensornet and its [test] extras, installed
#     (not editable), so the tests exercise the installed package.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v strace >/dev/null 2>&1 || missing+=(strace)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet '.[test]'
# checkov pins packaging<24, which pytest 9 cannot use: it gets a venv of its own.
python3 -m venv .venv-checkov
.venv-checkov/bin/python -m pip install --quiet 'checkov==3.3.30'
export CHECKOV="$PWD/.venv-checkov/bin/checkov"
# The console script, not "python -m pytest": that would put the checkout
# on sys.path and hide the installed package behind it.
exec .venv/bin/pytest "$@"
