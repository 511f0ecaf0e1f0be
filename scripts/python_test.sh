#!/usr/bin/env bash
# The Python package: builds its wheel (maturin, the `neurodiff` binary inside, no libtorch),
# installs it into a new virtualenv, and runs the package's tests there (pytest: the embedded
# audit against the CLI, the client against a real service, the quick-start notebook executed)
# and the type checker. Run by scripts/test.sh after the Rust tests; `--wheel-only` just builds.
#
# The new virtualenv takes torch and the other dependencies from the project's environment
# through a .pth file rather than copying 5 GB of torch again; the package itself, its binary and
# its metadata come from the wheel alone (the tests check they are not the source tree's).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
root="$PWD"
wheels="$root/target/wheels"
rm -f "$wheels"/neurodiff-*.whl
( cd python && maturin build --profile dev --out "$wheels" --quiet )
wheel="$(ls "$wheels"/neurodiff-*.whl)"
# The binary's run path names this machine's torch (crates/core/build.rs); the wheel's instead
# names the torch installed beside it in the user's environment (bin/ -> lib/pythonX.Y/
# site-packages/torch/lib), and the package's launcher puts the importable torch's first anyway.
unpacked="$(mktemp -d)"
python -m wheel unpack --dest "$unpacked" "$wheel" >/dev/null
runpath=""
for v in 3.11 3.12 3.13 3.14; do
  runpath="$runpath${runpath:+:}\$ORIGIN/../lib/python$v/site-packages/torch/lib"
done
patchelf --set-rpath "$runpath" "$unpacked"/neurodiff-*/neurodiff-*.data/scripts/neurodiff
rm "$wheel"
python -m wheel pack --dest-dir "$wheels" "$unpacked"/neurodiff-* >/dev/null
rm -rf "$unpacked"
wheel="$(ls "$wheels"/neurodiff-*.whl)"
echo "neurodiff: built $(basename "$wheel") ($(du -h "$wheel" | cut -f1))" >&2
[ "${1:-}" = "--wheel-only" ] && exit 0
# The client's tests start a real service: PostgreSQL, Redis and Garage as scripts/test.sh has them.
source scripts/services.sh

venv="$root/target/py-venv"
rm -rf "$venv"
python3 -m venv "$venv"
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
project_site="$("$NEURODIFF_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
echo "$project_site" > "$site/project-env.pth"
# torch itself where a pip-installed torch would be, for the binary's run path to find it.
ln -s "$project_site/torch" "$site/torch"
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-index "$wheel"

# Type checking: the package and its tests, strict.
( cd python && "$NEURODIFF_VENV/bin/mypy" --config-file pyproject.toml )

# -P: the working directory is not on sys.path, so `neurodiff` is the installed wheel.
cd "$root/target"
env -u NEURODIFF_BIN NEURODIFF_EXPECT_INSTALLED=1 \
  "$venv/bin/python" -P -m pytest -p no:cacheprovider -q --durations=8 "$root/python/tests" "$@"
