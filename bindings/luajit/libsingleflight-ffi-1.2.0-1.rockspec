-- The LuaJIT FFI module as a rock: `luarocks make` in a checkout (or
-- luarocks install from the tag) compiles the C library from its own sources
-- (core/, capi/) with the project's CMake and installs it beside the module,
-- as singleflight/libsingleflight.so under the tree's C module directory,
-- where singleflight.lua finds it on package.cpath.  No libsingleflight has
-- to be installed first.  Run from the repository root, for LuaJIT:
--   luarocks --lua-version 5.1 make bindings/luajit/libsingleflight-ffi-1.2.0-1.rockspec
-- (OpenResty: luarocks --lua-dir=/usr/local/openresty/luajit make ...).
-- Needs cmake and a C++17 compiler; no Lua headers (nothing is compiled
-- against Lua: the module is plain Lua on LuaJIT's FFI).  The build goes to
-- $SF_ROCK_BUILD_DIR, by default build/luarocks-ffi in the checkout.
rockspec_format = "3.0"
package = "libsingleflight-ffi"
version = "1.2.0-1"
source = {
   url = "git+https://github.com/libsingleflight/libsingleflight.git",
   tag = "v1.2.0",
}
description = {
   summary = "Duplicate call suppression (Go's singleflight) for LuaJIT and OpenResty",
   detailed = [[
Concurrent calls with the same key run the function once and every caller
gets its value; followers inside coroutines (OpenResty requests) yield
instead of blocking, and singleflight.open_shared(name) is one group for
every nginx worker of a host.  Built on LuaJIT's FFI, with the C library
carried by the rock.]],
   license = "MIT",
   homepage = "https://github.com/libsingleflight/libsingleflight",
}
-- LuaJIT reports itself as Lua 5.1; the module needs its ffi library and
-- checks for it when loaded.
dependencies = {
   "lua >= 5.1, < 5.2",
}
build = {
   type = "command",
   build_command = [[
d=${SF_ROCK_BUILD_DIR:-build/luarocks-ffi}
cmake -S . -B "$d" -DCMAKE_BUILD_TYPE=Release -DSF_BUILD_EXAMPLES=OFF -DSF_BUILD_TESTS=OFF -DSF_BUILD_REDIS=OFF &&
cmake --build "$d" --target singleflight &&
mkdir -p "$d/rock" && cp -L "$d/libsingleflight.so" "$d/rock/libsingleflight.so"
]],
   install_command = [[
d=${SF_ROCK_BUILD_DIR:-build/luarocks-ffi}
mkdir -p "$(LIBDIR)/singleflight" "$(LUADIR)" &&
cp "$d/rock/libsingleflight.so" "$(LIBDIR)/singleflight/" &&
cp bindings/luajit/singleflight.lua "$(LUADIR)/"
]],
}
