#!/usr/bin/env bash
# newest-python.sh setup | run CMD... | version | root
#
# The newest CPython release, for the tests that build and install the wheel
# on it (ctest python.newest).  Debian 12 ships Python 3.11 only, PyPI ships
# no interpreters, and the machine reaches no other download site; Debian's
# unstable distribution packages the newest CPython, built against a newer
# glibc than Debian 12's, so it runs in a root of its own: a minimal Debian
# unstable made by debootstrap, with python$SF_NEWEST_PYTHON, its headers,
# a C++ compiler, CMake and SWIG from Debian, and a venv holding the build
# tools (scikit-build-core, build, auditwheel), downloaded on the host by
# pip and installed offline, and the test suite's pytest and uvloop as wheels.
#
#   setup   makes the root if it is missing or was made for another list of
#           packages or tools (scripts/setup.sh runs it; about a minute).
#           Kept between runs in $SF_NEWEST_PY_ROOT, outside any checkout.
#   run     runs CMD in the root with /proc and /dev mounted, in a private
#           mount namespace (the mounts go with the command).  The tools'
#           venv is /opt/sf-build; the interpreter python$SF_NEWEST_PYTHON.
#   version prints the interpreter's version.
#   root    prints where the root is.
#
# Needs root (debootstrap, chroot, mount).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The newest CPython minor release.  Raise it when Debian unstable has the
# next one (python3.N); the stamp then makes setup build a new root.
SF_NEWEST_PYTHON=${SF_NEWEST_PYTHON:-3.15}
root=${SF_NEWEST_PY_ROOT:-/var/cache/libsingleflight/python$SF_NEWEST_PYTHON-unstable}
mirror=${SF_DEBIAN_MIRROR:-http://deb.debian.org/debian}
py=python$SF_NEWEST_PYTHON
packages="$py,$py-venv,$py-dev,g++,make,cmake,ninja-build,swig,patchelf,ca-certificates"
tools="build scikit-build-core auditwheel"
# The binding's test suite's own needs, kept as wheels in /opt/sf-test-wheels
# for a test's fresh venv to install offline.
test_tools="pytest uvloop"
stamp_text="$py | $packages | $tools | $test_tools"

need_root() { [ "$(id -u)" -eq 0 ] || sf_die "newest-python.sh needs root (debootstrap, chroot, mount)"; }

setup() {
    need_root
    # Two setups at once (two checkouts' CI runs) would both write $root.new.
    mkdir -p "$(dirname "$root")"
    exec 9>"$root.lock"
    flock 9
    # Made, and for these packages.  (The venv's bin/python is a symlink to
    # /usr/bin/python3.N, which means the root's only inside it: test pip.)
    if [ "$(cat "$root/.sf-stamp" 2>/dev/null)" = "$stamp_text" ] && [ -f "$root/opt/sf-build/bin/pip" ]; then
        return 0
    fi
    sf_require debootstrap python3
    sf_log "setup: Debian unstable with $py in $root (debootstrap)"
    rm -rf "$root.new"
    debootstrap --variant=minbase --include="$packages" unstable "$root.new" "$mirror" \
        >"$(dirname "$root")/debootstrap.log" 2>&1 ||
        sf_die "debootstrap of Debian unstable failed (see $(dirname "$root")/debootstrap.log)"
    # The build tools, as wheels for that interpreter, fetched on the host
    # (whose pip knows the way to PyPI) and installed with no network.
    mkdir -p "$root.new/tmp/sf-wheels"
    python3 -m pip download -q --disable-pip-version-check --only-binary=:all: --implementation cp \
        --python-version "$SF_NEWEST_PYTHON" --dest "$root.new/tmp/sf-wheels" $tools ||
        sf_die "pip download of $tools for $py failed"
    chroot "$root.new" sh -c "$py -m venv /opt/sf-build &&
        /opt/sf-build/bin/pip install -q --disable-pip-version-check --no-index /tmp/sf-wheels/*.whl" ||
        sf_die "installing $tools in the $py root failed"
    rm -rf "$root.new/tmp/sf-wheels"
    python3 -m pip download -q --disable-pip-version-check --only-binary=:all: --implementation cp \
        --python-version "$SF_NEWEST_PYTHON" --dest "$root.new/opt/sf-test-wheels" $test_tools ||
        sf_die "pip download of $test_tools for $py failed"
    printf '%s\n' "$stamp_text" >"$root.new/.sf-stamp"
    rm -rf "$root"
    mv "$root.new" "$root"
}

run() {
    need_root
    [ -f "$root/.sf-stamp" ] || sf_die "no $py root in $root (scripts/setup.sh makes it)"
    # Private mounts: /proc (the tests read /proc/self/maps) and /dev, gone
    # when the command ends, whatever way it ends.
    unshare --mount --propagation private -- sh -c '
        root=$1; shift
        mount -t proc proc "$root/proc" && mount --rbind /dev "$root/dev" &&
        exec chroot "$root" "$@"' sh "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"
}

case ${1:-} in
    setup) setup ;;
    run) shift; [ $# -gt 0 ] || sf_die "newest-python.sh run CMD..."; run "$@" ;;
    version) run "$py" --version ;;
    root) echo "$root" ;;
    *) sf_die "usage: newest-python.sh setup | run CMD... | version | root" ;;
esac
