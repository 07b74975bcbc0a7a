#!/bin/sh
# The export list: the shared object must export exactly the functions the
# public header declares, nothing else, each in the version node the export
# map (capi/singleflight.map) gives it: a function named in a later node
# (SF_1.1, ...) there, every other one in SF_1.
set -eu
so=$1
header=$2
map=${3:-$(cd "$(dirname "$0")/.." && pwd)/capi/singleflight.map}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
nm -D --defined-only "$so" | awk '$2 ~ /^[TDBRVW]$/ {print $3}' | sort > "$tmp/exported"
# Declarations look like "SF_API <type> <name>(" possibly with * before name.
grep -E '^SF_API ' "$header" | sed -E 's/\(.*//; s/.*[ *]([a-z_0-9]+)$/\1/' | sort > "$tmp/declared"
# name -> node for the names a node lists explicitly (not the sf_* wildcard).
awk '/^[A-Z0-9_.]+ *\{/ { node = $1 }
     /^ *sf_[a-z0-9_]+;/ { gsub(/[ ;]/, ""); print $0, node }' "$map" | sort > "$tmp/nodes"
status=0
sed 's/@@.*$//' "$tmp/exported" > "$tmp/names"
if ! diff -u "$tmp/declared" "$tmp/names"; then
    echo "FAIL: exported symbols differ from the header's declarations"; status=1
fi
while IFS= read -r sym; do
    name=${sym%%@@*}
    version=${sym#*@@}
    want=$(awk -v n="$name" '$1 == n { print $2 }' "$tmp/nodes")
    [ -n "$want" ] || want=SF_1
    if [ "$version" != "$want" ]; then
        echo "FAIL: $name is in version node $version, the map says $want"; status=1
    fi
done < "$tmp/exported"
if grep -v '^sf_' "$tmp/names"; then
    echo "FAIL: symbols above lack the sf_ prefix"; status=1
fi
[ $status -eq 0 ] && echo "exports OK: $(wc -l < "$tmp/names") sf_* symbols, each in its version node"
exit $status
