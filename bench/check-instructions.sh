#!/usr/bin/env bash
# The uncontended call's instruction budget, counted by callgrind: a count,
# not a time, so it does not move with the machine's load and can gate CI.
#
#   bench/check-instructions.sh LIBDIR [BOUND]
#
# Builds bench/callcount.c against the library in LIBDIR (the build under
# test), runs it under callgrind with N and 2N calls, and takes the
# difference over N: the instructions of one sf_group_do (trivial fn that
# stores a value, 1024 rotating 8-byte keys) with its sf_result_value and
# sf_result_release, the caller's loop and the fn included, start-up and
# warm-up cancelled out.  Fails above BOUND (default 250, the target in docs/performance.md).  The
# same for the two-phase pair sf_group_begin + sf_call_finish_unshared is
# printed, not gated.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/../scripts/lib.sh"
libdir=$(cd "$1" && pwd)
bound=${2:-250}
sf_require cc valgrind
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc -O2 -I"$SF_ROOT/capi/include" "$here/callcount.c" -o "$work/callcount" \
   -L"$libdir" -lsingleflight -Wl,-rpath,"$libdir"

count() { # N [two-phase]: instructions of the whole run
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" "$work/callcount" "$@" \
        2>"$work/cg.log" || { cat "$work/cg.log" >&2; sf_die "callcount $* failed"; }
    sed -n 's/^==[0-9]*== Collected : \([0-9]*\)$/\1/p' "$work/cg.log"
}
per_call() { # [two-phase]
    local n=100000 a b
    a=$(count $n "$@")
    b=$(count $((2 * n)) "$@")
    echo $(( (b - a) / n ))
}
do_call=$(per_call)
two_phase=$(per_call two-phase)
echo "instructions per uncontended call: sf_group_do $do_call (bound $bound);" \
     "sf_group_begin + sf_call_finish_unshared $two_phase"
[ "$do_call" -le "$bound" ] || sf_die "sf_group_do takes $do_call instructions, above the bound $bound"
