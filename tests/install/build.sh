#!/usr/bin/env bash
# The install tests' fixture: installs what they need (until the machine
# set-up script does), then builds the library as docs/bindings.md says, in
# WORK/build.  The other install tests wait for it (ctest FIXTURES), so the
# package installation never runs in parallel.
#   tests/install/build.sh WORK
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/../../scripts/lib.sh"

# Debian packages of the install tests: the C and C++ consumers, the SWIG
# bindings' toolchains, the Rust and Go consumers, the manual page checks,
# Meson for the two-builds comparison, unshare for the sandbox.
SF_INSTALL_TEST_PKGS=(build-essential cmake pkg-config binutils util-linux
    swig liblua5.4-dev lua5.4 openjdk-17-jdk-headless maven python3-dev python3-venv
    man-db groff-base mandoc meson ninja-build)
sf_need "${SF_INSTALL_TEST_PKGS[@]}"
command -v cargo >/dev/null || sf_need cargo
command -v go >/dev/null || sf_need golang-go

exec bash "$here/run.sh" "$1" build
