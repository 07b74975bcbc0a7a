#!/bin/sh
# Header hygiene: singleflight.h must compile as C89 and C99 and as C++98/17
# with every warning an error, alone and twice (include guard).
set -eu
inc=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/use.c" <<'SRC'
#include "singleflight.h"
#include "singleflight.h"
int main(void) {
    sf_group_options o = SF_GROUP_OPTIONS_INIT;
    sf_group_stats st;
    st.version = SF_GROUP_STATS_VERSION;
    (void)st;
    return sf_version_number() == SF_VERSION_NUMBER && o.version == 1 ? 0 : SF_EINVAL;
}
SRC
cp "$tmp/use.c" "$tmp/use.cpp"
CC=${CC:-cc}
CXX=${CXX:-c++}
fail=0
for std in c89 c99 c11; do
    if ! $CC -std=$std -Wall -Wextra -pedantic -Werror -I"$inc" -c "$tmp/use.c" -o "$tmp/o.o"; then
        echo "FAIL: header as $std"; fail=1
    fi
done
for std in c++98 c++11 c++17; do
    if ! $CXX -std=$std -Wall -Wextra -pedantic -Werror -I"$inc" -c "$tmp/use.cpp" -o "$tmp/o.o"; then
        echo "FAIL: header as $std"; fail=1
    fi
done
[ $fail -eq 0 ] && echo "header compiles cleanly as c89 c99 c11 c++98 c++11 c++17"
exit $fail
