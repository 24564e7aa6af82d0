#!/usr/bin/env bash
# The whole test suite: pytest over atop_core, and nbval over the notebooks once they exist.
# Extra arguments go to pytest (e.g. `bash run_tests.sh -m "not slow"`).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap_env.sh
# The browser test starts JupyterLab from its own environment (scripts/lab_env.sh): set it up
# where the test can run, or must (.ci/run sets ATOP_BROWSER_TEST=required).
if [ "${ATOP_BROWSER_TEST:-}" = required ] ||
   command -v chromium chromium-browser google-chrome >/dev/null; then
  source scripts/lab_env.sh
fi
targets=(tests)
if compgen -G "notebooks/*.ipynb" >/dev/null; then
  targets+=(--nbval-lax notebooks)
fi
echo "run_tests: python -m pytest ${targets[*]} $*  (ATOP_DATA_DIR=${ATOP_DATA_DIR:-unset})"
python -m pytest "${targets[@]}" "$@"
