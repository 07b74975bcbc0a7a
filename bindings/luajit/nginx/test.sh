#!/usr/bin/env bash
# The LuaJIT binding's shared group in a real nginx with the Lua module
# (Debian's nginx + libnginx-mod-http-lua, on OpenResty's LuaJIT): 4 workers,
# a stampede on one key, fn runs once (see test.py).  Uses the installed
# library (SF_LIBRARY, else SF_PREFIX/lib, else LD_LIBRARY_PATH); the
# top-level test command sets SF_ROOT and SF_PREFIX.
set -euo pipefail

SF_ROOT=${SF_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)}
. "$SF_ROOT/scripts/lib.sh"
sf_require nginx python3
module=/usr/lib/nginx/modules/ngx_http_lua_module.so
[ -f "$module" ] ||
    sf_die "not installed: $module (libnginx-mod-http-lua; scripts/setup.sh installs it, and nothing may reinstall Debian's luajit, which removes it)"

library=${SF_LIBRARY:-}
if [ -z "$library" ]; then
    IFS=: read -r -a dirs <<<"${SF_PREFIX:+$SF_PREFIX/lib:}${LD_LIBRARY_PATH:-}"
    for d in "${dirs[@]}"; do
        if [ -n "$d" ] && [ -f "$d/libsingleflight.so.1" ]; then library=$d/libsingleflight.so.1; break; fi
    done
fi
[ -n "$library" ] || sf_die "no libsingleflight.so.1 in SF_PREFIX/lib or LD_LIBRARY_PATH (set SF_LIBRARY)"

sf_log "LuaJIT binding in nginx: $(nginx -v 2>&1), $library"
# The timeout turns a hang into a failure; test.py stops its nginx itself.
status=0
timeout 600 python3 "$SF_ROOT/bindings/luajit/nginx/test.py" "$library" || status=$?
[ "$status" -eq 0 ] || sf_die "LuaJIT nginx test failed (exit $status)"
