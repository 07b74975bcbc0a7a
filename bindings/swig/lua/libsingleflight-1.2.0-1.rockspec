-- The Lua 5.4 module as a rock: `luarocks make` in a checkout (or luarocks
-- install from the tag) compiles the C library's own sources (core/, capi/)
-- into singleflight_core.so with the project's CMake, so no libsingleflight
-- has to be installed first.  Run from the repository root:
--   luarocks make bindings/swig/lua/libsingleflight-1.2.0-1.rockspec
-- Needs cmake, a C++17 compiler and swig (4.0 or later).  The build goes to
-- $SF_ROCK_BUILD_DIR, by default build/luarocks in the checkout.
rockspec_format = "3.0"
package = "libsingleflight"
version = "1.2.0-1"
source = {
   url = "git+https://github.com/libsingleflight/libsingleflight.git",
   tag = "v1.2.0",
}
description = {
   summary = "Duplicate call suppression (Go's singleflight) for Lua 5.4",
   detailed = [[
Concurrent calls with the same key run the function once and every caller
gets its value; followers inside coroutines yield instead of blocking, and
sf.shared(name) is one group for every Lua state of the process.]],
   license = "MIT",
   homepage = "https://github.com/libsingleflight/libsingleflight",
}
dependencies = {
   "lua >= 5.4, < 5.5",
}
build = {
   type = "command",
   build_command = [[
d=${SF_ROCK_BUILD_DIR:-build/luarocks}
cmake -S . -B "$d" -DCMAKE_BUILD_TYPE=Release -DSF_BUILD_EXAMPLES=OFF -DSF_BUILD_TESTS=OFF -DSF_BUILD_REDIS=OFF \
  -DSF_BUILD_LUA=ON -DSF_LUA_ROCK=ON -DLUA_INCLUDE_DIR="$(LUA_INCDIR)" &&
cmake --build "$d" --target sf_lua &&
mkdir -p "$d/rock" && cp "$d/bindings/swig/lua/singleflight_core.so" "$d/rock/"
]],
   install_command = [[
d=${SF_ROCK_BUILD_DIR:-build/luarocks}
mkdir -p "$(LIBDIR)" "$(LUADIR)" &&
cp "$d/rock/singleflight_core.so" "$(LIBDIR)/" &&
cp bindings/swig/lua/singleflight.lua "$(LUADIR)/"
]],
}
