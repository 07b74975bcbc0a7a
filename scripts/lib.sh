# Shared shell helpers for the project's scripts.  Source it, don't run it.
#   . "$(dirname "$0")/../scripts/lib.sh"   (or from the repo root)

SF_ROOT=${SF_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
export SF_ROOT

sf_log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
sf_die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# sf_need PKG...: install the Debian packages that are missing, so every
# script works on a fresh machine with nothing typed by hand.  apt-get update
# runs at most once per process tree.
sf_need() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    sf_log "installing ${missing[*]}"
    if [ -z "${SF_APT_UPDATED:-}" ]; then
        $sudo apt-get update -q >/dev/null || sf_die "apt-get update failed"
        export SF_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends \
        "${missing[@]}" >/dev/null || sf_die "apt-get install ${missing[*]} failed"
}

# The packages the core build, its tests and the demos need (both build
# systems, GoogleTest, valgrind, SQLite for the stampede demo).
SF_CORE_PKGS=(build-essential cmake ninja-build meson pkg-config libgtest-dev
              valgrind binutils libsqlite3-dev)
