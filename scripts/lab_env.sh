# Sourced by scripts/lab.sh and run_tests.sh (or run: bash scripts/lab_env.sh): make sure
# JupyterLab's own environment exists, .venv-lab (or ATOP_LAB_ENV), with requirements-lab.txt
# installed and the project's Python (the one scripts/bootstrap_env.sh activates) registered in it
# as the kernel `python3`, the name the notebooks ask for. Exports ATOP_LAB_ENV.
# JupyterLab cannot share the project's environment: it needs requests>=2.31, and torchattacks'
# metadata pins requests~=2.25.1. Start it with JUPYTER_PATH="$ATOP_LAB_ENV/share/jupyter" (as
# scripts/lab.sh and tests/browser.py do), so that no user-level `python3` kernel shadows ours.

if [ -z "${_atop_root:-}" ]; then
  # shellcheck source=bootstrap_env.sh
  source "$(dirname "${BASH_SOURCE[0]}")/bootstrap_env.sh"
fi
ATOP_LAB_ENV="${ATOP_LAB_ENV:-$_atop_root/.venv-lab}"
mkdir -p "$ATOP_LAB_ENV" && ATOP_LAB_ENV="$(cd "$ATOP_LAB_ENV" && pwd)"
export ATOP_LAB_ENV

_lab_kernel="$ATOP_LAB_ENV/share/jupyter/kernels/python3/kernel.json"
_lab_python="$(python -c 'import sys; print(sys.executable)')"
_lab_want="$(sha256sum "$_atop_root/requirements-lab.txt" | cut -d' ' -f1) $_lab_python"
if [ "$(cat "$ATOP_LAB_ENV/.atop-installed" 2>/dev/null)" != "$_lab_want" ] ||
   [ ! -f "$_lab_kernel" ]; then
  python -c "import ipykernel" 2>/dev/null || {
    echo "lab_env: $(command -v python) lacks ipykernel; install the project's notebooks extra:" >&2
    echo "  python -m pip install -e '$_atop_root[notebooks]'" >&2
    exit 2; }
  if [ ! -x "$ATOP_LAB_ENV/bin/python" ]; then
    echo "lab_env: creating $ATOP_LAB_ENV (JupyterLab's own environment)"
    python -m venv "$ATOP_LAB_ENV"
  fi
  echo "lab_env: installing requirements-lab.txt into $ATOP_LAB_ENV"
  "$ATOP_LAB_ENV/bin/python" -m pip install --quiet --upgrade pip
  "$ATOP_LAB_ENV/bin/python" -m pip install --quiet -r "$_atop_root/requirements-lab.txt"
  # After the install: it replaces the lab environment's own python3 kernel (which lacks torch).
  # The display name is the notebooks' own, so JupyterLab does not rewrite their metadata.
  # (Quiet: it warns that this prefix is not on the project environment's own kernel path.)
  _lab_out="$(python -m ipykernel install --prefix "$ATOP_LAB_ENV" --name python3 \
    --display-name "Python 3 (ipykernel)" 2>&1)" || { echo "$_lab_out" >&2; exit 2; }
  echo "lab_env: kernel python3 -> $_lab_python"
  echo "$_lab_want" > "$ATOP_LAB_ENV/.atop-installed"
fi
