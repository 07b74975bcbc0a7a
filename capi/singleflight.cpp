// The extern "C" boundary: argument checks, then one call into the core.
// Conversions between handles and core objects live in capi/handles.hpp;
// the rules of a call live in core/call.cpp.  No C++ exception reaches a C
// caller: the core is noexcept wherever it can be, and what remains (fn
// running inside sf_group_do) may throw only a forced unwind, which must
// keep going because the thread is exiting.
#include <cxxabi.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

#include "capi/handles.hpp"
#include "core/platform.hpp"
#include "singleflight.h"

using sfc::core;
using sfc::handle;
using sfc::shared_call;

namespace {

// No object is larger than PTRDIFF_MAX bytes: a longer length is garbage
// (a negative ssize_t cast, say) that must not reach a memcpy.
bool bad_key(const void *key, size_t len) {
    return (key == nullptr && len != 0) || len > size_t(PTRDIFF_MAX);
}

void clear_out(sf_result **result, int *shared) {
    if (result) *result = nullptr;
    if (shared) *shared = 0;
}

// Hands *result the reference r, or drops it when the caller wants none.
void give_result(sf::Flight *r, sf_result **result) {
    if (result) {
        *result = sfc::result(r);
    } else {
        sf::flight_release(r);
    }
}

}  // namespace

extern "C" {

SF_API int sf_group_options_init(sf_group_options *opts, unsigned int version) {
    if (!opts || version < 1 || version > SF_GROUP_OPTIONS_VERSION) return SF_EINVAL;
    // Field by field: a version-1 caller's struct ends before max_threads.
    opts->version = version;
    opts->shards = 0;
    opts->executor = nullptr;
    opts->executor_payload = nullptr;
    if (version >= 2) opts->max_threads = 0;
    return SF_OK;
}

SF_API int sf_group_new(sf_group **out, const sf_group_options *opts) {
    if (!out) return SF_EINVAL;
    if (opts && (opts->version < 1 || opts->version > SF_GROUP_OPTIONS_VERSION)) return SF_EINVAL;
    const unsigned max_threads = opts && opts->version >= 2 ? opts->max_threads : 0;
    if (max_threads > SF_POOL_MAX_THREADS) return SF_EINVAL;
    // `shards` sizes the flight table (its home slots; see the header).
    const unsigned slots = opts ? opts->shards : 0;
    sf::Group *g = sf::Group::create(slots, opts ? opts->executor : nullptr,
                                     opts ? opts->executor_payload : nullptr, max_threads);
    if (!g) return SF_ENOMEM;
    *out = handle(g);
    return SF_OK;
}

SF_API int sf_group_free(sf_group *g) {
    if (!g) return SF_EINVAL;
    return sf::Group::destroy(core(g));
}

namespace {
struct SharedFn {
    sf_fn fn;
    void *payload;
};

SF_CATCHES_FORCED_UNWIND
inline int shared_do(sf::SharedGroup *s, const void *key, size_t key_len, sf_fn fn, void *payload,
                     sf_result **result, int *shared) {
    SharedFn ctx{fn, payload};
    sf::Flight *r = nullptr;
    bool is_shared = false;
    const sf::Status st = sf::shared_run(
        s, sf::Key{key, key_len},
        [](void *c, sf::SharedCall *call) {
            auto *f = static_cast<SharedFn *>(c);
            return f->fn(handle(call), f->payload);
        },
        &ctx, &r, &is_shared);
    if (st < 0 && st != sf::kPanic && st != sf::kGoexit) {
        clear_out(result, shared);
        return st;
    }
    if (shared) *shared = is_shared ? 1 : 0;
    give_result(r, result);
    return st;
}
}  // namespace

namespace {
int shared_group_do(sf_group *g, const void *key, size_t key_len, sf_fn fn, void *payload,
                    sf_result **result, int *shared);
}  // namespace

SF_CATCHES_FORCED_UNWIND
SF_API int sf_group_do(sf_group *g, const void *key, size_t key_len, sf_fn fn, void *payload,
                       sf_result **result, int *shared) {
    if (__builtin_expect(!g || !fn || bad_key(key, key_len), 0)) {
        clear_out(result, shared);
        return SF_EINVAL;
    }
    // A shared group's handle: straight to the shared path (two
    // instructions on the local one; before, a shared call first hashed
    // its key for the local table and was turned back at a poisoned slot).
    if (__builtin_expect(core(g)->shared() != nullptr, 0))
        return shared_group_do(g, key, key_len, fn, payload, result, shared);
    try {
        sf::Flight *r = nullptr;
        bool is_shared = false;
        const sf::Status st = core(g)->run(
            sf::Key{key, key_len}, [&](sf::Flight *call) { return fn(handle(call), payload); }, &r,
            &is_shared);
        if (__builtin_expect(st < 0 && st != sf::kPanic && st != sf::kGoexit, 0)) {
            clear_out(result, shared);
            return st;
        }
        if (shared) *shared = is_shared ? 1 : 0;
        give_result(r, result);
        return st;
    } catch (abi::__forced_unwind &) {
        throw;  // the thread is exiting inside fn: the flight is already a Goexit
    } catch (...) {
        return SF_EPANIC;  // unreachable: run turns fn's exceptions into kPanic
    }
}

namespace {
SF_CATCHES_FORCED_UNWIND
int shared_group_do(sf_group *g, const void *key, size_t key_len, sf_fn fn, void *payload,
                    sf_result **result, int *shared) {
    const int st = shared_do(core(g)->shared(), key, key_len, fn, payload, result, shared);
    // Full, and asked to: coalesce within this process instead.
    if (st == SF_ENOMEM && core(g)->fallback())
        return sf_group_do(handle(core(g)->fallback()), key, key_len, fn, payload, result, shared);
    return st;
}
}  // namespace

namespace {
// A shared group's do_async: the shared do on the group's executor, then
// done.  (Its follower occupies the executor thread while it waits.)
struct SharedTask {
    sf_group *g;
    sf_fn fn;
    void *payload;
    sf_done_fn done;
    void *done_payload;
    size_t key_len;
    unsigned char key[1];  // key_len bytes
};

void shared_task(void *arg) {
    auto *t = static_cast<SharedTask *>(arg);
    sf_result *r = nullptr;
    int shared = 0;
    const int st =
        shared_do(core(t->g)->shared(), t->key, t->key_len, t->fn, t->payload, &r, &shared);
    {
        sf::detail::NoCancel no_cancel;
        try {
            t->done(st == SF_OK || st == SF_EPANIC || st == SF_EGOEXIT ? st : SF_EPANIC, r, shared,
                    t->done_payload);
        } catch (...) {
            // done must not throw (header)
        }
    }
    if (r) sf_result_release(r);
    free(t);
}
}  // namespace

SF_API int sf_group_do_async(sf_group *g, const void *key, size_t key_len, sf_fn fn, void *payload,
                             sf_done_fn done, void *done_payload) {
    if (!g || !fn || !done || bad_key(key, key_len)) return SF_EINVAL;
    if (core(g)->shared()) {
        if (key_len > (size_t(1) << 30)) return SF_ENOMEM;
        auto *t = static_cast<SharedTask *>(malloc(sizeof(SharedTask) + key_len));
        if (!t) return SF_ENOMEM;
        *t = SharedTask{g, fn, payload, done, done_payload, key_len, {0}};
        if (key_len) memcpy(t->key, key, key_len);
        const sf::Status st = core(g)->submit(shared_task, t);
        if (st != sf::kOk) free(t);
        return st;
    }
    return core(g)->run_async(sf::Key{key, key_len}, sfc::work_callback(fn, payload),
                              sfc::done_callback(done, done_payload));
}

SF_API int sf_group_begin(sf_group *g, const void *key, size_t key_len, sf_call **call) {
    if (call) *call = nullptr;
    if (!g || !call || bad_key(key, key_len)) return SF_EINVAL;
    if (__builtin_expect(core(g)->shared() != nullptr, 0)) {
        // A shared group's handle, before the local path hashes the key
        // for a table it does not use (as in sf_group_do).
        sf::SharedCall *sc = nullptr;
        const sf::Status st = sf::shared_begin(core(g)->shared(), sf::Key{key, key_len}, &sc);
        if (st > 0) *call = handle(sc);
        if (st == sf::kNoMemory && core(g)->fallback())
            return sf_group_begin(handle(core(g)->fallback()), key, key_len, call);
        return st;
    }
    sf::Call *c = nullptr;
    const sf::Status rc = core(g)->begin(sf::Key{key, key_len}, &c);
    if (rc > 0) *call = handle(c);
    return rc;
}

SF_API int sf_call_role(const sf_call *call) {
    if (!call) return SF_EINVAL;
    if (const sf::SharedCall *s = shared_call(call)) return sf::shared_call_role(s);
    return int(sf::call_role(core(call)));
}

SF_API void sf_call_set_value(sf_call *call, void *value, sf_destroy_fn destroy) {
    // A shared group's call goes to the shared set_value on the slow path.
    sf::call_set_value(call ? core(call) : nullptr, value, destroy);  // NULL: refused
}

SF_API int sf_call_set_bytes(sf_call *call, const void *data, size_t len) {
    if (!call || (!data && len != 0) || len > size_t(PTRDIFF_MAX)) return SF_EINVAL;
    if (sf::SharedCall *s = shared_call(call)) return sf::shared_set_bytes(s, data, len);
    return sf::call_set_bytes(core(call), data, len);
}

SF_API int sf_call_finish(sf_call *call, int error) {
    if (!call) return SF_EINVAL;
    if (sf::SharedCall *s = shared_call(call)) return sf::shared_finish(s, error);
    return int(sf::call_finish(core(call), error));
}

SF_API int sf_call_panic(sf_call *call, const char *message) {
    if (!call) return SF_EINVAL;
    if (sf::SharedCall *s = shared_call(call)) return sf::shared_panic(s, message);
    return int(sf::call_panic(core(call), message));
}

SF_API int sf_call_finish_unshared(sf_call *call, int error) {
    if (!call) return SF_EINVAL;
    const int rc = sf::call_finish_unshared(core(call), error);
    // A shared group's call is no local leader: refused, and sent on here.
    if (__builtin_expect(rc == sf::kBadState, 0) && shared_call(call))
        return sf::shared_finish_unshared(shared_call(call), error);
    return rc;
}

SF_API int sf_call_wait(sf_call *call, sf_i64 timeout_ns, sf_result **result, int *shared) {
    clear_out(result, shared);
    if (!call) return SF_EINVAL;
    if (sf::SharedCall *s = shared_call(call)) {
        sf::Flight *r = nullptr;
        bool is_shared = false;
        const sf::Status st = sf::shared_wait(s, timeout_ns, result ? &r : nullptr, &is_shared);
        if (st == sf::kOk || st == sf::kPanic || st == sf::kGoexit) {
            if (result) *result = sfc::result(r);
            if (shared) *shared = is_shared ? 1 : 0;
        }
        return st;
    }
    sf::Flight *r = nullptr;
    bool is_shared = false;
    const sf::Status st = sf::call_wait(core(call), timeout_ns, result ? &r : nullptr, &is_shared);
    if (st == sf::kOk || st == sf::kPanic || st == sf::kGoexit) {
        if (result) *result = sfc::result(r);
        if (shared) *shared = is_shared ? 1 : 0;
    }
    return st;
}

SF_API int sf_call_on_done(sf_call *call, sf_done_fn done, void *payload) {
    if (!call || !done) return SF_EINVAL;
    if (sf::SharedCall *s = shared_call(call))
        return sf::shared_on_done(s, sfc::done_callback(done, payload));
    return sf::call_on_done(core(call), sfc::done_callback(done, payload));
}

SF_API int sf_call_fd(sf_call *call) {
    if (!call) return SF_EINVAL;
    if (sf::SharedCall *s = shared_call(call)) return sf::shared_fd(s);
    return int(sf::call_fd(core(call)));
}

SF_API int sf_call_doorbell(sf_call *call, char *address, size_t len, sf_u64 *token) {
    if (!call || !address || !token) return SF_EINVAL;
    if (sf::SharedCall *s = shared_call(call)) {
        uint64_t t = 0;
        const sf::Status st = sf::shared_doorbell(s, address, len, &t);
        if (st == sf::kOk) *token = t;
        return st;
    }
    return SF_ESTATE;
}

SF_API int sf_call_cancel(sf_call *call) {
    if (!call) return SF_EINVAL;
    if (sf::SharedCall *s = shared_call(call)) return sf::shared_cancel(s);
    return sf::call_cancel(core(call));
}

SF_API int sf_call_disown(sf_call *call) {
    if (!call) return SF_EINVAL;
    if (sf::SharedCall *s = shared_call(call)) return sf::shared_disown(s);
    return int(sf::call_disown(core(call)));
}

SF_API int sf_call_lead_here(sf_call *call) {
    if (!call) return SF_EINVAL;
    if (sf::SharedCall *s = shared_call(call)) return sf::shared_lead_here(s);
    return int(sf::call_lead_here(core(call)));
}

SF_API int sf_call_abandoned(const sf_call *call) {
    if (!call) return 0;
    if (const sf::SharedCall *s = shared_call(call)) return sf::shared_abandoned(s);
    return sf::call_abandoned(const_cast<sf::Call *>(core(call)));
}

SF_API int sf_call_on_abandon(sf_call *call, sf_abandon_fn fn, void *payload) {
    if (!call || !fn) return SF_EINVAL;
    if (sf::SharedCall *s = shared_call(call))
        return sf::shared_on_abandon(s, sfc::abandon_callback(fn, payload));
    return sf::call_on_abandon(core(call), sfc::abandon_callback(fn, payload));
}

SF_API void sf_call_release(sf_call *call) {
    if (!call) return;
    if (sf::SharedCall *s = shared_call(call)) return sf::shared_release(s);
    sf::call_release(core(call));
}

SF_API int sf_group_forget(sf_group *g, const void *key, size_t key_len) {
    if (!g || bad_key(key, key_len)) return SF_EINVAL;
    if (sf::SharedGroup *s = core(g)->shared())
        return sf::shared_forget(s, sf::Key{key, key_len}, false);
    return core(g)->forget(sf::Key{key, key_len}, false);
}

SF_API int sf_group_forget_unshared(sf_group *g, const void *key, size_t key_len) {
    if (!g || bad_key(key, key_len)) return SF_EINVAL;
    if (sf::SharedGroup *s = core(g)->shared())
        return sf::shared_forget(s, sf::Key{key, key_len}, true);
    return core(g)->forget(sf::Key{key, key_len}, true);
}

// A shared group's result is shaped like a local one (core/shared.hpp):
// value, error, retain and release need no other path.
SF_API void *sf_result_value(const sf_result *r) { return r ? core(r)->value : nullptr; }

SF_API const void *sf_result_bytes(const sf_result *r, size_t *len) {
    size_t n = 0;
    const void *p = nullptr;
    if (r && core(r)->role == sf::kRoleSharedResult) {
        p = sf::shared_result_bytes(core(r), &n);
    } else if (r) {
        p = sf::bytes_of(core(r)->value, core(r)->destroy, &n);
    }
    if (len) *len = n;
    return p;
}

SF_API int sf_result_error(const sf_result *r) { return r ? core(r)->error : 0; }

SF_API const char *sf_result_panic_message(const sf_result *r) {
    if (!r || core(r)->status() != sf::kPanic) return nullptr;
    if (core(r)->role == sf::kRoleSharedResult) return sf::shared_result_panic_message(core(r));
    return sf::flight_panic_message(core(r));
}

SF_API sf_result *sf_result_retain(sf_result *r) {
    if (r) sf::flight_retain(core(r));
    return r;
}

SF_API void sf_result_release(sf_result *r) {
    if (r) sf::flight_release(core(r));
}

SF_API int sf_group_stats_get(const sf_group *g, sf_group_stats *out) {
    if (!g || !out || out->version < 1 || out->version > SF_GROUP_STATS_VERSION) return SF_EINVAL;
    sf::SharedStats sh{};
    if (sf::SharedGroup *s = core(g)->shared()) sh = sf::shared_stats(s);
    const sf::Counts c = core(g)->shared() ? sh.counts : core(g)->counts();
    // Field by field: a version-1 caller's struct ends after in_flight.
    out->leaders = c.leaders;
    out->followers = c.followers;
    out->calls = c.leaders + c.followers;  // the header defines it so
    out->panics = c.panics;
    out->goexits = c.goexits;
    out->timeouts = c.timeouts;
    out->forgets = c.forgets;
    out->in_flight = c.leaders - c.completed;
    if (out->version >= 2) {
        out->abandons = c.abandons;
        out->cancels = c.cancels;
    }
    if (out->version >= 3) {
        out->in_flight_high = sh.in_flight_high;
        out->arena_used = sh.arena_used;
        out->arena_high = sh.arena_high;
        out->processes = sh.processes;
    }
    return SF_OK;
}

SF_API int sf_shared_options_init(sf_shared_options *opts, unsigned int version) {
    if (!opts || version != SF_SHARED_OPTIONS_VERSION) return SF_EINVAL;
    const sf_shared_options defaults = SF_SHARED_OPTIONS_INIT;
    *opts = defaults;
    return SF_OK;
}

SF_API int sf_group_open_shared(const char *name, const sf_shared_options *opts, sf_group **out) {
    if (!out) return SF_EINVAL;
    if (opts && opts->version != SF_SHARED_OPTIONS_VERSION) return SF_EINVAL;
    if (opts && (opts->flags & ~SF_SHARED_RUN_UNSHARED)) return SF_EINVAL;
    const bool by_path = opts && opts->path;
    if (by_path == (name != nullptr)) return SF_EINVAL;  // exactly one of them
    sf::SharedOptions o;
    try {
        if (by_path) {
            if (!*opts->path) return SF_EINVAL;
            o.path = opts->path;
        } else {
            o.name = name;
        }
    } catch (...) {
        return SF_ENOMEM;
    }
    if (opts) {
        o.arena_bytes = opts->arena_bytes;
        o.max_value_bytes = opts->max_value_bytes;
        o.table_slots = opts->table_slots;
        o.max_processes = opts->max_processes;
        o.mode = opts->mode;
        o.run_unshared_when_full = opts->flags & SF_SHARED_RUN_UNSHARED;
    }
    sf::SharedGroup *s = nullptr;
    const sf::Status st = sf::shared_open(o, &s);
    if (st != sf::kOk) return st;
    sf::Group *g = sf::Group::create_shared(s, o.run_unshared_when_full);
    if (!g) {
        sf::shared_close(s);
        return SF_ENOMEM;
    }
    *out = handle(g);
    return SF_OK;
}

}  // extern "C"
