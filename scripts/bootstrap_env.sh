# Sourced by run_all.sh and run_tests.sh: make sure a Python with this checkout's atop_core is active.
# Uses the active environment when it already imports this checkout; otherwise creates or updates
# .venv (torch first, from the pinned wheels, then the project with its pinned dependencies).
# Set ATOP_PYTHON to choose the interpreter that creates .venv (default: python3.11, else python3).

_atop_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

_atop_env_ok() {
  python - "$_atop_root" <<'PY' 2>/dev/null
import sys, pathlib
import atop_core
sys.exit(0 if pathlib.Path(atop_core.__file__).resolve().parents[1] == pathlib.Path(sys.argv[1]) else 1)
PY
}

if command -v python >/dev/null && _atop_env_ok && [ ! -d "$_atop_root/.venv" ]; then
  echo "bootstrap: using the active environment ($(command -v python))"
  python -c "import torchattacks" 2>/dev/null || {
    echo "bootstrap: adding torchattacks==3.5.1 (--no-deps, see pyproject.toml) to it"
    python -m pip install --quiet --no-deps "torchattacks==3.5.1"; }
else
  _stamp="$_atop_root/.venv/.atop-installed"
  _want="$(sha256sum "$_atop_root/pyproject.toml" | cut -d' ' -f1)"
  if [ ! -x "$_atop_root/.venv/bin/python" ]; then
    _py="${ATOP_PYTHON:-$(command -v python3.11 || command -v python3)}"
    "$_py" -c 'import sys; assert sys.version_info[:2] in [(3, 11), (3, 12)], sys.version' || {
      echo "bootstrap: $_py is not Python 3.11 or 3.12; set ATOP_PYTHON to one" >&2; exit 2; }
    echo "bootstrap: creating .venv with $_py"
    "$_py" -m venv "$_atop_root/.venv"
  fi
  # shellcheck disable=SC1091
  source "$_atop_root/.venv/bin/activate"
  if [ "$(cat "$_stamp" 2>/dev/null)" != "$_want" ]; then
    echo "bootstrap: installing the project into .venv (first run: several minutes)"
    python -m pip install --quiet --upgrade pip
    python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
    python -m pip install --quiet -e "$_atop_root[dev]"
    # --no-deps: see the note in pyproject.toml (its requests pin conflicts with jupyterlab 4)
    python -m pip install --quiet --no-deps "torchattacks==3.5.1"
    echo "$_want" > "$_stamp"
  fi
  echo "bootstrap: using $_atop_root/.venv"
fi
