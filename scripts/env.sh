# Sets up (once) and activates the project-local Python environment that provides libtorch.
# Source it: `source scripts/env.sh`. Idempotent; a second run takes well under a second.
# NEURODIFF_VENV overrides where the virtualenv lives (default: .venv in the repository).
_nd_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export NEURODIFF_VENV="${NEURODIFF_VENV:-$_nd_root/.venv}"
_nd_stamp="$NEURODIFF_VENV/.neurodiff-requirements"
if ! cmp -s "$_nd_root/scripts/requirements.txt" "$_nd_stamp" 2>/dev/null; then
  echo "neurodiff: preparing the Python environment in $NEURODIFF_VENV (torch 2.11.0; first time only)" >&2
  python3 -m venv "$NEURODIFF_VENV" || return 1 2>/dev/null || exit 1
  "$NEURODIFF_VENV/bin/pip" install --quiet --disable-pip-version-check \
    -r "$_nd_root/scripts/requirements.txt" || return 1 2>/dev/null || exit 1
  cp "$_nd_root/scripts/requirements.txt" "$_nd_stamp"
fi
export VIRTUAL_ENV="$NEURODIFF_VENV"
case ":$PATH:" in *":$NEURODIFF_VENV/bin:"*) ;; *) export PATH="$NEURODIFF_VENV/bin:$PATH" ;; esac
# torch-sys finds libtorch through this Python (tch 0.24.0 requires torch 2.11.0 exactly).
export LIBTORCH_USE_PYTORCH=1
unset _nd_root _nd_stamp
