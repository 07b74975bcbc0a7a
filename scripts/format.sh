#!/usr/bin/env bash
# Formats the project's C and C++ sources with .clang-format, or with
# --check lists the files that are not formatted and fails (a ctest test,
# label `core`).  The frozen 1.0 suites (tests/compat/) and the public
# headers (capi/include/, redis/include/, laid out by hand for C89) keep
# their own form, and the Go binding's generated copies of core/ and capi/
# (sf_amalgam_*: their sources are what is formatted) are left as generated.
#
#   scripts/format.sh [--check]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SF_ROOT"
check=0
[ "${1:-}" = --check ] && check=1
command -v clang-format >/dev/null || sf_die "clang-format is not installed (scripts/setup.sh installs it)"
mapfile -t files < <(git ls-files -- '*.c' '*.h' '*.cpp' '*.hpp' ':!tests/compat/**' ':!capi/include/**' \
    ':!redis/include/**' ':!bindings/go/internal/engine/sf_amalgam_*' 2>/dev/null ||
    find core capi redis tests bench examples fuzz bindings \( -name '*.c' -o -name '*.h' -o -name '*.cpp' -o -name '*.hpp' \) -not -path 'tests/compat/*' -not -path 'capi/include/*' \
         -not -path 'redis/include/*' -not -name 'sf_amalgam_*')
bad=()
for f in "${files[@]}"; do
    [ -f "$f" ] || continue
    if [ $check = 1 ]; then
        clang-format "$f" | cmp -s - "$f" || bad+=("$f")
    else
        clang-format -i "$f"
    fi
done
if [ $check = 1 ] && [ ${#bad[@]} -gt 0 ]; then
    printf 'not formatted (run scripts/format.sh): %s\n' "${bad[@]}" >&2
    exit 1
fi
