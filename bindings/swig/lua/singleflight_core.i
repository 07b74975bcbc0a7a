/* Lua 5.4 half of the shared interface: keys and values are Lua strings.
 * Values are copied into the flight as bytes, which is what lets Lua states
 * on different threads share a group: no Lua object ever crosses states. */
%module singleflight_core

%{
#include <chrono>
#include <string>
#include "sfswig.hpp"

namespace sfswig {
/* What get_string() hands to its out typemap: the flight's bytes (borrowed
 * from the result) or NULL for nil. */
struct LuaBytes {
    const std::string *bytes;
};
}

static void sflua_destroy(void *value) {
    delete static_cast<std::string *>(value);
    sfswig::live_counter().fetch_sub(1);
}
%}

/* Only real strings: a number key would silently equal its decimal form. */
%typemap(in) (const char *key, size_t key_len) {
    if (lua_type(L, $input) != LUA_TSTRING) {
        lua_pushfstring(L, "singleflight: key must be a string, got %s", luaL_typename(L, $input));
        SWIG_fail;
    }
    size_t len_ = 0;
    $1 = const_cast<char *>(lua_tolstring(L, $input, &len_));
    $2 = len_;
}
%typemap(in) (const char *bytes, size_t bytes_len) {
    if (lua_type(L, $input) != LUA_TSTRING) {
        lua_pushfstring(L, "singleflight: value must be a string, got %s", luaL_typename(L, $input));
        SWIG_fail;
    }
    size_t len_ = 0;
    $1 = const_cast<char *>(lua_tolstring(L, $input, &len_));
    $2 = len_;
}

%typemap(out) sfswig::LuaBytes {
    if ($1.bytes)
        lua_pushlstring(L, $1.bytes->data(), $1.bytes->size());
    else
        lua_pushnil(L);
    SWIG_arg++;
}

%extend sfswig::Flight {
    /* Leader only: stores a copy of the bytes as the flight's value. */
    void set_string(const char *bytes, size_t bytes_len) {
        std::string *copy = new std::string(bytes, bytes_len);
        sfswig::live_counter().fetch_add(1);
        $self->set_value(copy, sflua_destroy);
    }

    /* As wait(), but every status comes back as a number, SF_EDEADLK
     * included: whether that is an error depends on who waits (a
     * coroutine whose leader is another coroutine on this thread only
     * gives up). */
    int wait_status(long long timeout_ns) {
        try {
            return $self->wait(timeout_ns);
        } catch (const sfswig::Error &e) {
            return e.code();
        }
    }

    /* This caller gives up (sf_call_cancel): 1 when that abandoned the
     * flight (nobody else was interested), 0 when others still are, a
     * negative status when it could not: SF_ESTATE once the flight has
     * completed (wait for its outcome instead) or the caller already gave
     * up.  The handle must still be released. */
    int cancel() { return sf_call_cancel($self->handle()); }

    /* True once every caller gave up while the flight ran
     * (sf_call_abandoned); false after release(). */
    bool abandoned() { return $self->handle() && sf_call_abandoned($self->handle()) == 1; }

    /* After a completed wait(): the value as a Lua string (a fresh copy in
     * the calling state), or nil when the leader stored none. */
    sfswig::LuaBytes get_string() {
        sfswig::LuaBytes v;
        v.bytes = static_cast<const std::string *>($self->value());
        return v;
    }
}

/* What a follower's wait returns after it gave up. */
%constant int ECANCELED = SF_ECANCELED;

%inline %{
/* Seconds on a clock that never jumps (CLOCK_MONOTONIC), for the deadline of
 * a follower coroutine's timeout: Lua's os.clock is CPU time and os.time
 * has whole seconds. */
double monotonic_seconds(void) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
%}

%include "../singleflight.i"
