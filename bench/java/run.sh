#!/usr/bin/env bash
# Builds the Java binding's jar from a CMake build with the SWIG modules
# (tests skipped: ctest -L java runs them) and runs AsyncBench against it:
#
#   bench/java/run.sh [BUILD_DIR] [-- AsyncBench args: --runs R --callers N --cancel-rounds C]
#
# BUILD_DIR defaults to build/default (cmake --preset default).  Prints the
# figures; asserts behaviour only (one execution, every caller served).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/../../scripts/lib.sh"
sf_require mvn java

build=${SF_BUILD_DIR:-$SF_ROOT/build/default}
if [ $# -gt 0 ] && [ "$1" != "--" ]; then build=$1; shift; fi
[ "${1:-}" = "--" ] && shift
swig=$build/bindings/swig
[ -d "$swig/java/gen" ] || sf_die "$build has no Java SWIG module (cmake --preset default && cmake --build --preset default)"

mvn -q -B -f "$SF_ROOT/bindings/swig/java/pom.xml" -Dsf.build.dir="$swig" -DskipTests package
jar=$(ls "$swig"/java/maven/libsingleflight-*.jar | head -n1)
sf_log "AsyncBench against $jar ($(java -version 2>&1 | head -n1))"
exec java -cp "$jar" "$here/AsyncBench.java" "$@"
