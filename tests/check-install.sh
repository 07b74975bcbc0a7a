#!/usr/bin/env bash
# An installed prefix (anywhere: the .pc and the CMake package are
# relocatable) is usable the ways users reach it: a C program built with
# exactly what pkg-config prints, shared and fully static, and CMake projects
# using find_package(singleflight), in C and with the C++ wrapper.  Nothing
# here sets LD_LIBRARY_PATH: the shared program carries pkg-config's libdir as
# its RUNPATH, the CMake ones CMake's build RPATH.
#   tests/check-install.sh PREFIX
set -euo pipefail
prefix=$(cd "$1" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"

major=$(sed -n 's/^#define SF_VERSION_MAJOR \([0-9]*\)/\1/p' "$prefix/include/singleflight.h")
soname=$(readelf -d "$prefix/lib/libsingleflight.so" | sed -n 's/.*SONAME.*\[\(.*\)\]/\1/p')
[ "$soname" = "libsingleflight.so.$major" ] || { echo "SONAME $soname, want libsingleflight.so.$major"; exit 1; }
[ -f "$prefix/lib/libsingleflight.a" ] || { echo "no static library installed"; exit 1; }

cat > "$tmp/app.c" <<'SRC'
#include <stdio.h>
#include <string.h>
#include <singleflight.h>
static int fn(sf_call *call, void *payload) { sf_call_set_value(call, payload, NULL); return 0; }
int main(void) {
    sf_group *g; sf_result *r; int shared;
    if (sf_version_number() != SF_VERSION_NUMBER) return 2;
    if (sf_group_new(&g, NULL) != SF_OK) return 3;
    if (sf_group_do(g, "k", 1, fn, "installed", &r, &shared) != SF_OK) return 4;
    printf("%s %s\n", (char *)sf_result_value(r), sf_version_string());
    sf_result_release(r);
    return sf_group_free(g);
}
SRC
unset LD_LIBRARY_PATH
# out CMD...: CMD's output, kept whole (`cmd | grep -q` can fail under
# pipefail when grep stops reading early).
out() { "$@" 2>&1 || { echo "failed: $*" >&2; return 1; }; }

cc "$tmp/app.c" -o "$tmp/app" $(pkg-config --cflags --libs singleflight) \
    -Wl,-rpath,"$(pkg-config --variable=libdir singleflight)"
[[ $(out "$tmp/app") == "installed "* ]] || { echo "pkg-config app failed"; exit 1; }
echo "pkg-config (shared): ok"

# Exactly what pkg-config prints: Libs.private must bring the C++ runtime.
cc -static "$tmp/app.c" -o "$tmp/app-static" $(pkg-config --static --cflags --libs singleflight)
[[ $(out readelf -l "$tmp/app-static") != *INTERP* ]] || { echo "app-static is not static"; exit 1; }
[[ $(out "$tmp/app-static") == "installed "* ]] || { echo "static app failed"; exit 1; }
echo "pkg-config --static (cc -static): ok"

mkdir -p "$tmp/cm"
cp "$tmp/app.c" "$tmp/cm/app.c"
cat > "$tmp/cm/CMakeLists.txt" <<'SRC'
cmake_minimum_required(VERSION 3.16)
project(consumer C)
find_package(singleflight 1 REQUIRED)
add_executable(app app.c)
target_link_libraries(app PRIVATE singleflight::singleflight)
SRC
cmake -S "$tmp/cm" -B "$tmp/cm/b" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$tmp/cm/b" >/dev/null
[[ $(out "$tmp/cm/b/app") == "installed "* ]] || { echo "find_package app failed"; exit 1; }
echo "find_package(singleflight), singleflight::singleflight: ok"

# The C++ wrapper, installed beside the C header, through its own target.
mkdir -p "$tmp/cpp"
cat > "$tmp/cpp/app.cpp" <<'SRC'
#include <iostream>
#include <string>
#include <singleflight.hpp>
int main() {
    singleflight::group g;
    auto r = g.run("k", [] { return std::string("installed"); });
    std::cout << *r << " " << sf_version_string() << "\n";
    return *r == "installed" ? 0 : 1;
}
SRC
cat > "$tmp/cpp/CMakeLists.txt" <<'SRC'
cmake_minimum_required(VERSION 3.16)
project(consumer CXX)
find_package(singleflight 1 REQUIRED)
add_executable(app app.cpp)
target_link_libraries(app PRIVATE singleflight::cpp)
SRC
[ -f "$prefix/include/singleflight.hpp" ] || { echo "singleflight.hpp not installed"; exit 1; }
cmake -S "$tmp/cpp" -B "$tmp/cpp/b" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$tmp/cpp/b" >/dev/null
[[ $(out "$tmp/cpp/b/app") == "installed "* ]] || { echo "C++ find_package app failed"; exit 1; }
echo "find_package(singleflight), singleflight::cpp: ok"
