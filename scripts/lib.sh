# Shared shell helpers for the project's scripts.  Source it, don't run it.
#   . "$(dirname "$0")/../scripts/lib.sh"   (or from the repo root)
#
# Nothing here installs anything: the machine is set up once, by
# scripts/setup.sh (which scripts/test.sh, scripts/demo.sh and .ci/run run).

SF_ROOT=${SF_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
export SF_ROOT

sf_log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
sf_die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# sf_require CMD...: every command must be on PATH; a missing one is an
# error that names the fix, never a reason to skip.
sf_require() {
    local c missing=()
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || missing+=("$c")
    done
    [ ${#missing[@]} -eq 0 ] ||
        sf_die "not installed: ${missing[*]} (scripts/setup.sh installs everything the tests need)"
}

# The virtual environment scripts/setup.sh makes for the Python tests
# (pytest in it; the binding is put there by the tests themselves).
SF_VENV=${SF_VENV:-$SF_ROOT/build/venv}
export SF_VENV

# The crates the Rust tests build with, vendored there by scripts/setup.sh
# from bindings/rust/Cargo.lock, so the tests build offline with either
# toolchain.
SF_CARGO_VENDOR=${SF_CARGO_VENDOR:-$SF_ROOT/build/cargo-vendor}
export SF_CARGO_VENDOR
