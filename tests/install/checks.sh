#!/usr/bin/env bash
# checks.sh NAME: what the install test NAME asserts after running the
# documented commands (run.sh --check NAME), in the same sandbox and work
# directory.  The sample programs check their own results; these checks make
# sure they got them the intended way: the library found as a user's system
# finds it, nothing borrowed from the build tree.
set -euo pipefail
fail() { echo "check failed: $*" >&2; exit 1; }

# The installed library's directory, as pkg-config (a user's) sees it.
libdir=$(realpath "$(pkg-config --variable=libdir singleflight 2>/dev/null || echo /nonexistent)")

# (Outputs are captured before grep reads them: `cmd | grep -q` can fail
# under pipefail when grep stops reading early.)

# resolves BINARY: BINARY's libsingleflight.so.1 is the installed one, found
# without LD_LIBRARY_PATH.
resolves() {
    local line path
    line=$(ldd "$1" | grep 'libsingleflight\.so\.1 =>' || true)
    path=${line#*=> }
    path=${path% (*}
    [ -n "$line" ] && [ "$(realpath "$path")" = "$(realpath "$libdir/libsingleflight.so.1")" ] ||
        fail "$1 does not load $libdir/libsingleflight.so.1: ${line:-not needed}"
}

# has TEXT REGEX: TEXT matches the extended regular expression.
has() { grep -Eq -- "$2" <<<"$1"; }

case $1 in
c)
    resolves hello-c/hello
    resolves hello-c/build/hello
    # Fully static: no program interpreter, nothing to load.
    ! has "$(readelf -l hello-c/hello-static)" INTERP || fail "hello-static is dynamically linked"
    ;;
cpp)
    resolves hello-cpp/build/hello
    resolves hello-cpp/hello
    ;;
lua)
    # Found where lua5.4 looks by default, and linked to the installed library.
    module=$(lua5.4 -e 'print((package.searchpath("singleflight_core", package.cpath)))')
    case $module in "$libdir"/*) ;; *) fail "lua5.4 finds singleflight_core at '$module', not under $libdir" ;; esac
    resolves "$module"
    has "$(readelf -d "$module")" 'RUNPATH.*\$ORIGIN' || fail "$module has no \$ORIGIN RUNPATH"
    ;;
python)
    module=$(venv/bin/python -c 'import libsingleflight._singleflight_core as m; print(m.__file__)')
    resolves "$module"
    has "$(readelf -d "$module")" "RUNPATH.*\[$libdir\]" || fail "$module has no RUNPATH $libdir"
    ;;
java)
    # The jar carries the JNI library, with the C library linked in: it needs
    # no libsingleflight.so at all.
    jar=$(ls hello-java/target/dependency/libsingleflight-*.jar)
    so=io/github/libsingleflight/native/linux-$(uname -m)/libsingleflight_core_jni.so
    mkdir -p jar-contents
    (cd jar-contents && jar xf "../$jar" "$so")
    [ -f "jar-contents/$so" ] || fail "$jar has no $so"
    ! has "$(readelf -d "jar-contents/$so")" 'NEEDED.*singleflight' ||
        fail "the bundled JNI library needs libsingleflight.so"
    ! has "$(nm -D --defined-only "jar-contents/$so")" ' sf_' ||
        fail "the bundled JNI library exports the C API"
    ;;
rust)
    resolves hello-rs/target/debug/hello-rs
    ;;
go)
    (cd hello-go && go build -tags singleflight_system -o hello .)
    resolves hello-go/hello
    ;;
*)
    fail "no checks for '$1'"
    ;;
esac
echo "checks for $1: ok"
