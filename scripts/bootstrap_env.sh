# Sourced by run_all.sh, run_tests.sh and the scripts: make sure a Python with this checkout's
# atop_core is active. Uses the active environment when it already imports this checkout;
# otherwise creates or updates .venv: torch first, at the versions results were computed with,
# then the project with its dev extra (notebooks, tests, ruff), again whenever pyproject.toml or
# the pins change. JupyterLab is not in it: it has an environment of its own (scripts/lab_env.sh).
# Set ATOP_PYTHON to choose the interpreter that creates .venv (default: python3.11, else python3).

_atop_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ATOP_TORCH_PINS=("torch==2.14.1" "torchvision==0.29.1")  # environment.yml names the same

_atop_env_ok() {
  python - "$_atop_root" <<'PY' 2>/dev/null
import sys, pathlib
import atop_core
sys.exit(0 if pathlib.Path(atop_core.__file__).resolve().parents[1] == pathlib.Path(sys.argv[1]) else 1)
PY
}

if [ ! -d "$_atop_root/.venv" ] && command -v python >/dev/null && _atop_env_ok; then
  echo "bootstrap: using the active environment ($(command -v python))"
  python -c "import torchattacks" 2>/dev/null || {
    echo "bootstrap: it lacks the project's dependencies (torchattacks); install them with" >&2
    echo "  python -m pip install -e '$_atop_root[dev]'" >&2
    exit 2; }
else
  _stamp="$_atop_root/.venv/.atop-installed"
  _want="$({ cat "$_atop_root/pyproject.toml"; echo "${ATOP_TORCH_PINS[*]}"; } | sha256sum)"
  _want="${_want%% *}"
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
    python -m pip install --quiet "${ATOP_TORCH_PINS[@]}"
    if python -m pip show --quiet jupyterlab-server >/dev/null 2>&1; then
      # A .venv from before JupyterLab moved out: its requests>=2.31 conflicts with torchattacks.
      echo "bootstrap: removing JupyterLab from .venv (it now runs from .venv-lab: scripts/lab.sh)"
      python -m pip uninstall --quiet --yes jupyterlab jupyterlab-server
    fi
    python -m pip install --quiet -e "$_atop_root[dev]"
    echo "$_want" > "$_stamp"
  fi
  echo "bootstrap: using $_atop_root/.venv"
fi
