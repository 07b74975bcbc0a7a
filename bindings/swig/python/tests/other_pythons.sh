#!/usr/bin/env bash
# Runs the Python binding's tests under other Python versions than the one
# CMake built for (do_async starts the work differently on 3.8-3.9, 3.10-3.11
# and 3.12+; see libsingleflight/_aio.py).  Not part of CI: it needs those
# interpreters, e.g. from pyenv.  For each one it compiles the SWIG wrapper
# the CMake build generated against that interpreter's headers, next to the
# build's libsingleflight, and runs pytest in a venv of its own (pytest and
# uvloop from PyPI) under build/pythons/.
#
#   bindings/swig/python/tests/other_pythons.sh [BUILD_DIR] PYTHON...
#   bindings/swig/python/tests/other_pythons.sh build/default ~/.pyenv/versions/3.1[23]*/bin/python
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)   # bindings/swig/python
root=$(cd "$here/../../.." && pwd)
build=build/default
if [ $# -gt 0 ] && [ -d "$1" ]; then build=$1; shift; fi
build=$(cd "$root" && cd "$build" && pwd)
wrap=$build/bindings/swig/sf_python_wrap/singleflight_corePYTHON_wrap.cxx
[ -f "$wrap" ] || { echo "no SWIG wrapper in $build: build the sf_python target first" >&2; exit 2; }
[ $# -gt 0 ] || { echo "usage: $0 [BUILD_DIR] PYTHON..." >&2; exit 2; }
failed=()
for py in "$@"; do
    v=$("$py" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
    d=$build/pythons/$v
    mkdir -p "$d/libsingleflight"
    cp "$here"/libsingleflight/*.py "$build/bindings/swig/python/libsingleflight/singleflight_core.py" "$d/libsingleflight/"
    ext=$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
    inc=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
    "${CXX:-c++}" -std=c++17 -O2 -shared -fPIC -fvisibility=hidden -I"$inc" -I"$here/.." -I"$here" \
        -I"$root/capi/include" "$wrap" -L"$build" -lsingleflight -Wl,-rpath,"$build" \
        -o "$d/libsingleflight/_singleflight_core$ext"
    [ -x "$d/venv/bin/python" ] || { "$py" -m venv "$d/venv" &&
        "$d/venv/bin/python" -m pip install -q --disable-pip-version-check pytest uvloop; }
    echo "== Python $v"
    if ! PYTHONPATH=$d timeout 600 "$d/venv/bin/python" -m pytest -q -p no:cacheprovider "$here/tests"; then
        failed+=("$v")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed under: ${failed[*]}" >&2
    exit 1
fi
