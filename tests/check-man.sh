#!/usr/bin/env bash
# The installed manual pages: every page renders with man(1) and passes
# groff's and mandoc's checks without a warning; every function and type the
# header declares opens a page (`man sf_group_free`); the status table of
# sf_strerror(3) is the header's SF_STATUS_MAP.
#   tests/check-man.sh PREFIX HEADER
set -euo pipefail
prefix=$(cd "$1" && pwd)
header=$2
man3=$prefix/share/man/man3
[ -d "$man3" ] || { echo "no manual pages in $man3"; exit 1; }
problems=0
problem() { echo "$*" >&2; problems=$((problems + 1)); }

export MANWIDTH=80 MANPATH=$prefix/share/man
pages=0
for page in "$man3"/*.3; do
    name=$(basename "$page" .3)
    if [ "$(head -c 4 "$page")" = ".so " ]; then
        # An alias: it must lead to a page that is installed.
        target=$(sed -n 's/^\.so man3\///p' "$page")
        [ -f "$man3/$target" ] || problem "$name: sources man3/$target, which is not installed"
        continue
    fi
    pages=$((pages + 1))
    # man -l: what a reader sees (tbl included); a warning is a failure.
    out=$(man -l "$page" 2>&1 >/dev/null) || problem "$name: man -l failed"
    [ -z "$out" ] || problem "$name: man -l: $out"
    out=$(groff -ww -z -t -man "$page" 2>&1) || problem "$name: groff failed"
    [ -z "$out" ] || problem "$name: groff -ww: $out"
    out=$(mandoc -T lint -W warning "$page" 2>&1) || problem "$name: mandoc -T lint: $out"
done
[ $pages -gt 0 ] || problem "no pages in $man3"

# Every exported function and every public type has a page to open.
names=$(sed -n -e 's/^SF_API[^(]*[ *]\(sf_[a-z_0-9]*\)(.*/\1/p' \
               -e 's/^typedef .*[ (*]\(sf_[a-z_0-9]*\)\(;\|)(.*\)$/\1/p' \
               -e 's/^} \(sf_[a-z_0-9]*\);$/\1/p' "$header" | sort -u)
[ -n "$names" ] || problem "no declarations found in $header"
for name in $names; do
    case $name in sf_i64 | sf_u64) continue ;; esac
    [ -f "$man3/$name.3" ] || { problem "$name: no manual page"; continue; }
    out=$(man 3 "$name" 2>&1 >/dev/null) || problem "man 3 $name: ${out:-failed}"
done

# The status codes: the same names and values as the header's table.
want=$(sed -n 's/^ *X(\(SF_[A-Z]*\), *\(-\{0,1\}[0-9]*\),.*/\1 \2/p' "$header")
have=$(sed -n 's/^\(SF_[A-Z]*\)|\(\\-\)\{0,1\}\([0-9]*\)|.*/\1 \2\3/p' "$man3/sf_strerror.3" | sed 's/\\-/-/')
[ "$want" = "$have" ] || problem "sf_strerror(3) status table differs from SF_STATUS_MAP:
$(diff <(echo "$want") <(echo "$have") || true)"

[ $problems -eq 0 ] || { echo "$problems problem(s) in the manual pages" >&2; exit 1; }
echo "manual pages: $pages pages, $(ls "$man3" | wc -l) names, all clean"
