#!/bin/sh
# The export list: the shared object must export exactly the functions the
# public header declares (all sf_*, all in version node SF_1), nothing else.
set -eu
so=$1
header=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
nm -D --defined-only "$so" | awk '$2 ~ /^[TDBRVW]$/ {print $3}' | sort > "$tmp/exported"
# Declarations look like "SF_API <type> <name>(" possibly with * before name.
grep -E '^SF_API ' "$header" | sed -E 's/\(.*//; s/.*[ *]([a-z_0-9]+)$/\1/' | sort > "$tmp/declared"
sed 's/@@SF_1$//' "$tmp/exported" > "$tmp/names"
status=0
if ! diff -u "$tmp/declared" "$tmp/names"; then
    echo "FAIL: exported symbols differ from the header's declarations"; status=1
fi
if grep -v '@@SF_1$' "$tmp/exported"; then
    echo "FAIL: symbols above are not in version node SF_1"; status=1
fi
if grep -v '^sf_' "$tmp/names"; then
    echo "FAIL: symbols above lack the sf_ prefix"; status=1
fi
[ $status -eq 0 ] && echo "exports OK: $(wc -l < "$tmp/names") sf_* symbols, all in SF_1"
exit $status
