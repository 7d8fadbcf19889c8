#!/usr/bin/env bash
# Installs what the tests need, then runs the whole suite (tiny models on CPU, real servers on
# localhost, a real headless Chromium). Screenshots and logs land in test-output/.
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh --test
exec "${PYTHON:-python3}" -m pytest -q --durations=15 "$@"
