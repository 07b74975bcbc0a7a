#!/usr/bin/env bash
# The Meson build beside the CMake one (ctest test `meson`): configures,
# builds and runs the core suites with Meson, installs, and checks that
#  - Meson registered the same tests under the same labels as this CMake
#    build (both read tests/suites.txt; this catches a test added to one
#    build file only);
#  - the two installs' singleflight.pc agree (tests/check-pc.sh).
#
#   tests/check-meson.sh CMAKE_BUILD_DIR CTEST
# Needs SF_ROOT and SF_PREFIX (the CMake install), as ctest sets them.
set -euo pipefail
cmake_build=$1 ctest=$2
: "${SF_ROOT:?}" "${SF_PREFIX:?}"
out=$cmake_build/meson
prefix=$cmake_build/meson-prefix

rm -rf "$out" "$prefix"
meson setup "$out" "$SF_ROOT" --prefix "$prefix" --libdir lib -Dtests=true >"$cmake_build/meson-setup.log" ||
    { cat "$cmake_build/meson-setup.log"; exit 1; }
ninja -C "$out" -j2 >/dev/null
MESON_TESTTHREADS=2 meson test -C "$out" --print-errorlogs
meson install -C "$out" --quiet
bash "$SF_ROOT/tests/check-pc.sh" "$SF_PREFIX" "$prefix"

python3 - "$out" "$cmake_build" "$ctest" <<'EOF'
import json, subprocess, sys
meson_dir, cmake_dir, ctest = sys.argv[1:]
run = lambda *a: subprocess.run(a, check=True, capture_output=True, text=True).stdout
meson = {t["name"]: sorted(s.split(":", 1)[1] for s in t["suite"])
         for t in json.loads(run("meson", "introspect", "--tests", meson_dir))}
cmake = {}
for t in json.loads(run(ctest, "--test-dir", cmake_dir, "--show-only=json-v1"))["tests"]:
    labels = next((p["value"] for p in t.get("properties", []) if p["name"] == "LABELS"), [])
    if "integration" not in labels:  # tests/integration: CMake only
        cmake[t["name"]] = sorted(labels)
if meson != cmake:
    print("Meson and CMake register different core tests:")
    for name in sorted(set(meson) | set(cmake)):
        if meson.get(name) != cmake.get(name):
            print("  %-20s meson %-30s cmake %s" % (name, meson.get(name), cmake.get(name)))
    sys.exit(1)
print("Meson and CMake register the same %d core tests with the same labels" % len(meson))
EOF
