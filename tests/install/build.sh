#!/usr/bin/env bash
# The install tests' fixture: builds the library as docs/bindings.md says,
# in WORK/build.  The other install tests wait for it (ctest FIXTURES).
#   tests/install/build.sh WORK
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/../../scripts/lib.sh"

# What these tests need (the consumers' toolchains, the manual page
# checks, unshare for the sandbox) is installed by scripts/setup.sh, under
# the label `install`.
sf_require cc c++ cmake pkg-config unshare swig lua5.4 mvn javac python3 man groff mandoc \
    meson ninja cargo go

exec bash "$here/run.sh" "$1" build
