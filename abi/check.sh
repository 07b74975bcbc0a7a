#!/usr/bin/env bash
# abi/check.sh BASELINE.abi LIBRARY.so
# Compares LIBRARY against the committed ABI baseline with libabigail.  Passes
# when nothing changed or when the only changes are additions (new functions
# or variables: a compatible minor-version change).  Fails on any removed or
# changed function or variable, including a change of a type reachable from
# one (a struct layout, an enum value, a parameter type), which abidiff only
# flags as "ABI change" (exit bit 4), not always as "incompatible" (bit 8).
set -uo pipefail
base=$1 lib=$2
# No header filtering here: the baseline was already reduced to the public
# types when it was written, and filtering the new library by header location
# hides real layout changes (the baseline carries no locations to match).
# The versioned structs may grow at their end (abi/versioned-structs.suppr
# says why); every other change counts.
report=$(abidiff --suppressions "$(dirname "$0")/versioned-structs.suppr" "$base" "$lib" 2>&1)
rc=$?
echo "$report"
if [ $((rc & 3)) -ne 0 ]; then
    echo "abi/check.sh: abidiff failed to run (exit $rc)" >&2
    exit 2
fi
[ $rc -eq 0 ] && exit 0
if [ $((rc & 8)) -ne 0 ]; then
    echo "abi/check.sh: INCOMPATIBLE ABI change (abidiff exit $rc)" >&2
    exit 1
fi
# Exit bit 4 alone: allow it only when every summary line shows nothing
# removed and nothing changed.
bad=$(printf '%s\n' "$report" | grep -E 'changes summary:' |
      grep -vE ': 0 Removed(,| )' ; printf '%s\n' "$report" | grep -E 'changes summary:' |
      grep -E '[1-9][0-9]* Changed')
if [ -n "$bad" ]; then
    echo "abi/check.sh: ABI change that is not a pure addition:" >&2
    echo "$bad" >&2
    exit 1
fi
echo "abi/check.sh: only additions (compatible); update the baseline when releasing"
exit 0
