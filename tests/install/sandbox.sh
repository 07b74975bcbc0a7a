#!/usr/bin/env bash
# sandbox.sh CMD [ARG...]: runs CMD where a system install is real but does
# not outlive CMD.
#
# The install tests run the documented commands verbatim: `sudo cmake
# --install build` into /usr/local, `sudo ldconfig`, `mvn install` into
# ~/.m2.  To do that without changing the machine, CMD runs in a private
# mount namespace (unshare --mount) in which
#   - /usr/local is an overlay: what is there stays visible (a Go toolchain,
#     say), everything written goes to a tmpfs;
#   - /etc/ld.so.cache is a private copy, and `ldconfig` writes that copy
#     (ldconfig replaces the cache by renaming a new file over it, which a
#     bind-mounted file refuses, so the scripts get an `ldconfig` function
#     that runs the real one on a scratch cache and copies it in);
#   - ~/.m2/repository/io/github/libsingleflight is a tmpfs, so `mvn install`
#     of our jar lands nowhere permanent while Maven's own plugins still come
#     from (and go to) the usual cache.
# Everything is gone when CMD exits.  Needs root, or unprivileged user
# namespaces (then the namespace maps the caller to root).
#
# In the namespace, SF_SANDBOX names a scratch directory and the file
# $SF_SANDBOX/shims.sh defines `sudo` and `ldconfig` for bash scripts to
# source.  Nothing here skips: if the namespace cannot be made, the test fails.
set -euo pipefail

if [ -z "${SF_SANDBOX:-}" ]; then
    [ $# -gt 0 ] || { echo "usage: sandbox.sh CMD [ARG...]" >&2; exit 2; }
    command -v unshare >/dev/null || { echo "sandbox.sh: unshare (util-linux) is missing" >&2; exit 1; }
    userns=()
    [ "$(id -u)" -eq 0 ] || userns=(--user --map-root-user)
    # SF_SANDBOX=pending marks the second run, inside the namespace.
    exec env SF_SANDBOX=pending unshare "${userns[@]}" --mount --propagation private \
        bash "${BASH_SOURCE[0]}" "$@"
fi

fail() { echo "sandbox.sh: $*" >&2; exit 1; }
[ "$SF_SANDBOX" = pending ] || fail "already inside a sandbox ($SF_SANDBOX)"

scratch=$(mktemp -d "${TMPDIR:-/tmp}/sf-sandbox.XXXXXX")
# A tmpfs under the overlay's upper layer: overlayfs refuses an upper layer on
# some filesystems (overlayfs itself, as in containers).
mount -t tmpfs -o mode=0755 sf-sandbox "$scratch" || fail "cannot mount a tmpfs (no CAP_SYS_ADMIN?)"
mkdir "$scratch/upper" "$scratch/work"
mount -t overlay sf-usr-local \
    -o "lowerdir=/usr/local,upperdir=$scratch/upper,workdir=$scratch/work" /usr/local \
    || fail "cannot mount an overlay on /usr/local"

cp /etc/ld.so.cache "$scratch/ld.so.cache"
mount --bind "$scratch/ld.so.cache" /etc/ld.so.cache || fail "cannot bind a private /etc/ld.so.cache"

m2=${HOME:-/root}/.m2/repository/io/github/libsingleflight
mkdir -p "$m2"
mount -t tmpfs -o mode=0755 sf-m2 "$m2" || fail "cannot mount a tmpfs on $m2"

cat >"$scratch/shims.sh" <<EOF
# Sourced by scripts run in the sandbox (tests/install/sandbox.sh).
# As root, sudo has nothing to add; a function keeps the shims below in play.
sudo() { "\$@"; }
ldconfig() {
    command ldconfig -C "$scratch/ld.so.cache.new" "\$@" &&
        cat "$scratch/ld.so.cache.new" >/etc/ld.so.cache
}
EOF

export SF_SANDBOX=$scratch
status=0
"$@" || status=$?
# The namespace takes its mounts along when it ends; only the empty mount
# point is left on the real filesystem.
umount /usr/local "$m2" /etc/ld.so.cache "$scratch" && rmdir "$scratch" || true
exit $status
