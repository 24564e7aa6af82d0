#!/usr/bin/env bash
# The library as `pip install` gives it: build the wheel, install it into a fresh virtual
# environment (nothing of this checkout or of its .venv visible), and import it there; fails,
# saying which step, if anything is missing. CI runs it (.ci/run).
#   bash scripts/check_wheel.sh
# torch and torchvision go in at scripts/bootstrap_env.sh's pins, so caches are reused: with uv
# (the dev extra) the ~5 GB of torch and CUDA wheels are hardlinked from its cache (seconds once
# warm), with pip they are unpacked again (about a minute). ATOP_WHEEL_INSTALLER=uv|pip chooses;
# default: uv where this environment has it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap_env.sh
start=$SECONDS
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
step() { echo "check_wheel: $*"; }
fail() { echo "check_wheel: FAILED: $*" >&2; exit 1; }

step "building the wheel"
python -m pip wheel --quiet --no-deps --wheel-dir "$tmp/dist" . >/dev/null || fail "pip wheel ."
wheels=("$tmp"/dist/atop_core-*.whl)
[ -f "${wheels[0]}" ] || fail "no atop_core wheel in $tmp/dist"
wheel="${wheels[0]}"

installer="${ATOP_WHEEL_INSTALLER:-$(python -c 'import uv' 2>/dev/null && echo uv || echo pip)}"
step "installing $(basename "$wheel") and ${ATOP_TORCH_PINS[*]} into a fresh venv ($installer)"
python -m venv "$tmp/venv"
fresh="$tmp/venv/bin/python"
case "$installer" in
  uv) python -m uv pip install --quiet --python "$fresh" "$wheel" "${ATOP_TORCH_PINS[@]}" \
        || fail "uv pip install"
      python -m uv pip check --quiet --python "$fresh" || fail "uv pip check" ;;
  pip) "$fresh" -m pip install --quiet --no-compile "$wheel" "${ATOP_TORCH_PINS[@]}" \
        || fail "pip install"
      "$fresh" -m pip check >/dev/null || fail "pip check" ;;
  *) fail "ATOP_WHEEL_INSTALLER=$installer: uv or pip" ;;
esac
step "built and installed in $((SECONDS - start)) s"

cd "$tmp"  # not the checkout: its atop_core/ must not be the one imported
unset PYTHONDONTWRITEBYTECODE  # a throwaway venv: the second start reuses the first's bytecode
step "import atop_core.attacks (the installed wheel's)"
"$fresh" - <<'PY' || fail "import atop_core.attacks (from the installed wheel, with its data)"
import atop_core.attacks  # noqa: F401 (first: the import under test)
import sys
from pathlib import Path

import atop_core
from atop_core.tables import load_reference

where = Path(atop_core.__file__).resolve()
assert where.is_relative_to(Path(sys.prefix).resolve()), f"imported from {where}"
assert load_reference()["tables"], "the packaged reference/paper.yaml has no tables"
PY
step "python -m atop_core --help"
"$fresh" -m atop_core --help >/dev/null || fail "python -m atop_core --help"
step "passed in $((SECONDS - start)) s"
