#!/bin/sh
# One-way layering: core/ is a C++ library that knows nothing of
# the C API.  Every core source compiles with the source root as its only
# include path (no capi/include), and none names the public header or a
# file of capi/.
#   tests/check-layering.sh SRC
set -eu
src=$1
cxx=${CXX:-c++}
status=0
if grep -nE '#include +[<"](singleflight\.h|capi/)' "$src"/core/*.hpp "$src"/core/*.cpp; then
    echo "FAIL: core/ includes the C API (lines above)"; status=1
fi
for f in "$src"/core/*.cpp; do
    if ! "$cxx" -std=c++17 -fsyntax-only -I"$src" "$f"; then
        echo "FAIL: $f does not compile without capi/include"; status=1
    fi
done
[ $status -eq 0 ] && echo "layering OK: core/ compiles alone and never names the C API"
exit $status
