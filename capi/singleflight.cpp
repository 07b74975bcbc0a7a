// The extern "C" boundary: argument checks, then one call into the core.
// Conversions between handles and core objects live in capi/handles.hpp;
// the rules of a call live in core/call.cpp.  No C++ exception reaches a C
// caller: the core is noexcept wherever it can be, and what remains (fn
// running inside sf_group_do) may throw only a forced unwind, which must
// keep going because the thread is exiting.
#include <cxxabi.h>

#include <cstdint>
#include <new>

#include "capi/handles.hpp"
#include "core/platform.hpp"
#include "singleflight.h"

using sfc::core;
using sfc::handle;

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

SF_CATCHES_FORCED_UNWIND
SF_API int sf_group_do(sf_group *g, const void *key, size_t key_len, sf_fn fn, void *payload,
                       sf_result **result, int *shared) {
    if (__builtin_expect(!g || !fn || bad_key(key, key_len), 0)) {
        clear_out(result, shared);
        return SF_EINVAL;
    }
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

SF_API int sf_group_do_async(sf_group *g, const void *key, size_t key_len, sf_fn fn, void *payload,
                             sf_done_fn done, void *done_payload) {
    if (!g || !fn || !done || bad_key(key, key_len)) return SF_EINVAL;
    return core(g)->run_async(sf::Key{key, key_len}, sfc::work_callback(fn, payload),
                              sfc::done_callback(done, done_payload));
}

SF_API int sf_group_begin(sf_group *g, const void *key, size_t key_len, sf_call **call) {
    if (call) *call = nullptr;
    if (!g || !call || bad_key(key, key_len)) return SF_EINVAL;
    sf::Call *c = nullptr;
    const sf::Status rc = core(g)->begin(sf::Key{key, key_len}, &c);
    if (rc > 0) *call = handle(c);
    return rc;
}

SF_API int sf_call_role(const sf_call *call) {
    return call ? int(sf::call_role(core(call))) : SF_EINVAL;
}

SF_API void sf_call_set_value(sf_call *call, void *value, sf_destroy_fn destroy) {
    sf::call_set_value(call ? core(call) : nullptr, value, destroy);  // NULL: refused
}

SF_API int sf_call_finish(sf_call *call, int error) {
    return call ? int(sf::call_finish(core(call), error)) : SF_EINVAL;
}

SF_API int sf_call_panic(sf_call *call, const char *message) {
    return call ? int(sf::call_panic(core(call), message)) : SF_EINVAL;
}

SF_API int sf_call_finish_unshared(sf_call *call, int error) {
    return call ? int(sf::call_finish_unshared(core(call), error)) : SF_EINVAL;
}

SF_API int sf_call_wait(sf_call *call, sf_i64 timeout_ns, sf_result **result, int *shared) {
    clear_out(result, shared);
    if (!call) return SF_EINVAL;
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
    return sf::call_on_done(core(call), sfc::done_callback(done, payload));
}

SF_API int sf_call_fd(sf_call *call) { return call ? int(sf::call_fd(core(call))) : SF_EINVAL; }

SF_API int sf_call_cancel(sf_call *call) { return call ? sf::call_cancel(core(call)) : SF_EINVAL; }

SF_API int sf_call_disown(sf_call *call) {
    return call ? int(sf::call_disown(core(call))) : SF_EINVAL;
}

SF_API int sf_call_lead_here(sf_call *call) {
    return call ? int(sf::call_lead_here(core(call))) : SF_EINVAL;
}

SF_API int sf_call_abandoned(const sf_call *call) {
    return call ? sf::call_abandoned(const_cast<sf::Call *>(core(call))) : 0;
}

SF_API int sf_call_on_abandon(sf_call *call, sf_abandon_fn fn, void *payload) {
    if (!call || !fn) return SF_EINVAL;
    return sf::call_on_abandon(core(call), sfc::abandon_callback(fn, payload));
}

SF_API void sf_call_release(sf_call *call) {
    if (call) sf::call_release(core(call));
}

SF_API int sf_group_forget(sf_group *g, const void *key, size_t key_len) {
    if (!g || bad_key(key, key_len)) return SF_EINVAL;
    return core(g)->forget(sf::Key{key, key_len}, false);
}

SF_API int sf_group_forget_unshared(sf_group *g, const void *key, size_t key_len) {
    if (!g || bad_key(key, key_len)) return SF_EINVAL;
    return core(g)->forget(sf::Key{key, key_len}, true);
}

SF_API void *sf_result_value(const sf_result *r) { return r ? core(r)->value : nullptr; }

SF_API int sf_result_error(const sf_result *r) { return r ? core(r)->error : 0; }

SF_API const char *sf_result_panic_message(const sf_result *r) {
    return r && core(r)->status() == sf::kPanic ? sf::flight_panic_message(core(r)) : nullptr;
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
    const sf::Counts c = core(g)->counts();
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
    return SF_OK;
}

}  // extern "C"
