#!/usr/bin/env bash
# The test command (README, .ci/run): sets up .venv with the test extras if needed,
# then runs the whole pytest suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test,train]"
# Headless Chromium opens the QC report in a test (Debian's package; root on CI and dev machines).
if ! command -v chromium > /dev/null && [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core > /dev/null) \
    || echo "tests/run.sh: could not install chromium; the report screenshot test will skip"
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
