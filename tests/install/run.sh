#!/usr/bin/env bash
# run.sh [--sandbox] [--fresh] [--build DIR] [--check NAME] WORK BLOCK...
#
# Runs the blocks of docs/bindings.md marked for the named tests, verbatim
# (tests/install/docblocks.py), as one bash script in the work directory
# WORK, the way the page tells a user to: WORK holds the checkout as
# ./libsingleflight (a symlink here) and everything else is created beside it.
#
#   --sandbox       run inside tests/install/sandbox.sh (a private /usr/local,
#                   loader cache and ~/.m2 entry: `sudo cmake --install` and
#                   `mvn install` are real but do not outlive the test)
#   --fresh         start from an empty WORK
#   --build DIR     the library's build directory, linked as WORK/build
#   --check NAME    run `checks.sh NAME` after the blocks, in WORK and the
#                   same sandbox: assertions a user would not type
#
# The script runs with the environment a user's shell has: nothing pointing
# at a build tree or a staging prefix (no LD_LIBRARY_PATH, PKG_CONFIG_PATH,
# LUA_CPATH, PYTHONPATH, ...).  It is kept as WORK/commands.sh.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SF_ROOT=$(cd "$here/../.." && pwd)

sandbox=0 fresh=0 build= check=
while [ $# -gt 0 ]; do
    case $1 in
        --sandbox) sandbox=1; shift ;;
        --fresh) fresh=1; shift ;;
        --build) build=$2; shift 2 ;;
        --check) check=$2; shift 2 ;;
        -*) echo "run.sh: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
[ $# -ge 2 ] || { echo "usage: run.sh [options] WORK BLOCK..." >&2; exit 2; }
work=$1
shift

[ $fresh -eq 0 ] || rm -rf "$work"
mkdir -p "$work"
work=$(cd "$work" && pwd)
ln -sfn "$SF_ROOT" "$work/libsingleflight"
[ -z "$build" ] || ln -sfn "$(cd "$build" && pwd)" "$work/build"

script=$work/commands.sh
{
    echo "# tests/install/run.sh: docs/bindings.md, blocks: $*"
    echo 'set -euxo pipefail'
    # sudo and ldconfig, when in the sandbox (see sandbox.sh).
    echo 'if [ -n "${SF_SANDBOX:-}" ]; then . "$SF_SANDBOX/shims.sh"; fi'
    python3 "$here/docblocks.py" "$SF_ROOT/docs/bindings.md" "$@"
    if [ -n "$check" ]; then
        echo "# ---- checks: $check"
        printf 'bash %q %q\n' "$here/checks.sh" "$check"
    fi
} >"$script"

cd "$work"
clean=(env -u LD_LIBRARY_PATH -u LD_PRELOAD -u PKG_CONFIG_PATH -u CMAKE_PREFIX_PATH
       -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 -u PYTHONPATH
       -u CLASSPATH -u CARGO_TARGET_DIR -u SF_PREFIX -u SF_BUILD_DIR)
if [ $sandbox -eq 1 ]; then
    exec "${clean[@]}" bash "$here/sandbox.sh" bash "$script"
else
    exec "${clean[@]}" bash "$script"
fi
