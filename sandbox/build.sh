#!/usr/bin/env bash
# Builds the wasm executor's guest: CPython (bundled by componentize-py) + app.py, pre-initialised,
# into build/runner.wasm. Creates build/venv with the pinned componentize-py from PyPI on first run.
# Usage: sandbox/build.sh [OUT_DIR]   (default: sandbox/build)
set -euo pipefail

COMPONENTIZE_PY_VERSION=0.25.1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:-$here/build}
mkdir -p "$out"
out=$(cd "$out" && pwd)
venv=$out/venv
python=${PYTHON:-python3}

if ! "$venv/bin/componentize-py" --version 2>/dev/null | grep -qx "componentize-py $COMPONENTIZE_PY_VERSION"; then
  echo "sandbox/build.sh: installing componentize-py==$COMPONENTIZE_PY_VERSION into $venv" >&2
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
fi

# componentize-py snapshots app.py from its own directory; stage only the guest files so nothing
# else in sandbox/ (the build dir, the forkserver) ends up in the component.
stage=$(mktemp -d "$out/stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
cp "$here/app.py" "$here/preload.txt" "$stage/"
(cd "$stage" && "$venv/bin/componentize-py" --quiet -d "$here/wit" -w runner componentize app -o "$stage/runner.wasm")
# Atomic replace: a concurrent reader sees the old or the new component, never half of one.
mv -f "$stage/runner.wasm" "$out/runner.wasm"
echo "sandbox/build.sh: built $out/runner.wasm" >&2
