#!/usr/bin/env bash
# An install into a prefix of one's own (`cmake --install build --prefix P`),
# used from there: tests/check-install.sh (pkg-config shared and static,
# find_package in C and C++) and tests/check-man.sh (the manual pages).
#   tests/install/staged.sh BUILD PREFIX
set -euo pipefail
SF_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=$1 prefix=$2
rm -rf "$prefix"
cmake --install "$build" --prefix "$prefix"
bash "$SF_ROOT/tests/check-install.sh" "$prefix"
bash "$SF_ROOT/tests/check-man.sh" "$prefix" "$prefix/include/singleflight.h"
