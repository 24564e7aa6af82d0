#!/usr/bin/env bash
# RobustBench's classifiers, tested where the optional extra is installed: adds robustbench 1.1.1
# to the project's environment, its own files last (torchattacks 3.5.1's wheel ships an old copy
# of the package under the same name, and whichever is installed last wins), then runs
# tests/test_robustbench.py, which loads a checkpoint from RobustBench's model layout offline.
# CI runs it (.ci/run) after the suite, in which those tests skip without the extra.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap_env.sh
python -m pip install --quiet "robustbench==1.1.1"
python -m pip install --quiet --force-reinstall --no-deps "robustbench==1.1.1"
python -m pytest -q -p no:cacheprovider tests/test_robustbench.py
