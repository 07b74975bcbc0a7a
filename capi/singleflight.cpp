// The extern "C" boundary: argument checks, handle conversions, and the
// guarantee that no C++ exception reaches a C caller.  The opaque handle
// types are never defined; they are the core's objects under another name.
#include <cxxabi.h>

#include <cstdint>
#include <new>

#include "core/flight.hpp"
#include "core/group.hpp"
#include "core/platform.hpp"
#include "singleflight.h"

namespace {

sf::Group *G(sf_group *g) { return reinterpret_cast<sf::Group *>(g); }
const sf::Group *G(const sf_group *g) { return reinterpret_cast<const sf::Group *>(g); }
sf::Call *C(sf_call *c) { return reinterpret_cast<sf::Call *>(c); }
const sf::Call *C(const sf_call *c) { return reinterpret_cast<const sf::Call *>(c); }
sf::Flight *R(sf_result *r) { return reinterpret_cast<sf::Flight *>(r); }
const sf::Flight *R(const sf_result *r) { return reinterpret_cast<const sf::Flight *>(r); }

// No object is larger than PTRDIFF_MAX bytes: a longer length is garbage
// (a negative ssize_t cast, say) that must not reach a memcpy.
bool bad_key(const void *key, size_t len) {
    return (key == nullptr && len != 0) || len > size_t(PTRDIFF_MAX);
}

// The core is noexcept wherever it can be; what remains (user callbacks
// running inside sf_group_do) may throw only a forced unwind, which must keep
// going because the thread is exiting.  Anything else becomes a status.
#define SF_GUARD_BEGIN try {
#define SF_GUARD_END(fail)                 \
    }                                      \
    catch (abi::__forced_unwind &) {       \
        throw;                             \
    }                                      \
    catch (const std::bad_alloc &) {       \
        return SF_ENOMEM;                  \
    }                                      \
    catch (...) {                          \
        return fail;                       \
    }

void clear_out(sf_result **result, int *shared) {
    if (result) *result = nullptr;
    if (shared) *shared = 0;
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
    unsigned max_threads = opts && opts->version >= 2 ? opts->max_threads : 0;
    if (max_threads > SF_POOL_MAX_THREADS) return SF_EINVAL;
    sf::Group *g = opts ? sf::Group::create(opts->shards, opts->executor, opts->executor_payload,
                                            max_threads)
                        : sf::Group::create(0, nullptr, nullptr, 0);
    if (!g) return SF_ENOMEM;
    *out = reinterpret_cast<sf_group *>(g);
    return SF_OK;
}

SF_API int sf_group_free(sf_group *g) {
    if (!g) return SF_EINVAL;
    return sf::Group::destroy(G(g));
}

SF_CATCHES_FORCED_UNWIND
SF_API int sf_group_do(sf_group *g, const void *key, size_t key_len, sf_fn fn, void *payload,
                       sf_result **result, int *shared) {
    clear_out(result, shared);
    if (!g || !fn || bad_key(key, key_len)) return SF_EINVAL;
    SF_GUARD_BEGIN
    return G(g)->run(key, key_len, fn, payload, result, shared);
    SF_GUARD_END(SF_EPANIC)
}

SF_API int sf_group_do_async(sf_group *g, const void *key, size_t key_len, sf_fn fn,
                             void *payload, sf_done_fn done, void *done_payload) {
    if (!g || !fn || !done || bad_key(key, key_len)) return SF_EINVAL;
    return G(g)->run_async(key, key_len, fn, payload, done, done_payload);
}

SF_API int sf_group_begin(sf_group *g, const void *key, size_t key_len, sf_call **call) {
    if (call) *call = nullptr;
    if (!g || !call || bad_key(key, key_len)) return SF_EINVAL;
    sf::Call *c = nullptr;
    int rc = G(g)->begin(key, key_len, &c);
    if (rc > 0) *call = reinterpret_cast<sf_call *>(c);
    return rc;
}

SF_API int sf_call_role(const sf_call *call) { return call ? C(call)->role : SF_EINVAL; }

SF_API void sf_call_set_value(sf_call *call, void *value, sf_destroy_fn destroy) {
    sf::flight_set_value(call ? C(call) : nullptr, value, destroy);
}

namespace {
// sf_call_finish and sf_call_panic share their checks.
int leader_complete(sf_call *call, int status, int error, const char *message) {
    if (!call) return SF_EINVAL;
    sf::Call *c = C(call);
    if (c->role != SF_LEADER) return SF_ESTATE;
    sf::Flight *f = c->flight;
    if (c->kind != sf::CallKind::TwoPhase) {
        // Inside fn of sf_group_do/do_async: fn's return finishes the
        // flight; a panic request is remembered until then.
        if (status != SF_EPANIC || sf::call_finished(c)) return SF_ESTATE;
        if (!f->panic_pending) {
            f->panic_pending = true;
            f->pending_message = message ? sf::copy_message(message) : nullptr;
            f->pending_message_lost = message && !f->pending_message;
        }
        return SF_OK;
    }
    if (!sf::call_claim_finish(c)) return SF_ESTATE;
    sf::flight_complete(f, status, error, message);
    return SF_OK;
}
}  // namespace

SF_API int sf_call_finish(sf_call *call, int error) {
    if (call && C(call)->kind != sf::CallKind::TwoPhase) return SF_ESTATE;
    return leader_complete(call, SF_OK, error, nullptr);
}

SF_API int sf_call_panic(sf_call *call, const char *message) {
    return leader_complete(call, SF_EPANIC, 0, message);
}

SF_API int sf_call_wait(sf_call *call, sf_i64 timeout_ns, sf_result **result, int *shared) {
    clear_out(result, shared);
    if (!call) return SF_EINVAL;
    sf::Call *c = C(call);
    sf::Flight *f = c->flight;
    if (c->role == SF_LEADER && !f->done()) return SF_EDEADLK;
    // A follower waiting forever on a flight this very thread leads (inside
    // fn, or a two-phase flight it began) would wait for itself.  A bounded
    // wait ends by itself; it stays a wait that may time out.
    if (timeout_ns < 0 && !f->done() &&
        f->leader_thread.load(std::memory_order_relaxed) == sf::detail::this_thread_id())
        return SF_EDEADLK;
    if (!sf::flight_wait(f, timeout_ns)) {
        // A poll (timeout 0) is a question, not a wait that gave up: event
        // loops poll constantly and would drown the counter.
        if (timeout_ns > 0) c->shard->timeouts.fetch_add(1, std::memory_order_relaxed);
        return SF_ETIMEDOUT;
    }
    if (result) {
        sf::flight_retain(f);
        *result = reinterpret_cast<sf_result *>(f);
    }
    if (shared) *shared = c->role == SF_FOLLOWER ? 1 : f->shared;
    return f->status;
}

SF_API int sf_call_on_done(sf_call *call, sf_done_fn done, void *payload) {
    if (!call || !done) return SF_EINVAL;
    if (C(call)->kind != sf::CallKind::TwoPhase) return SF_ESTATE;
    return sf::call_on_done(C(call), done, payload);
}

SF_API int sf_call_fd(sf_call *call) {
    if (!call) return SF_EINVAL;
    if (C(call)->kind != sf::CallKind::TwoPhase) return SF_ESTATE;
    return sf::call_fd(C(call));
}

SF_API void sf_call_release(sf_call *call) {
    if (!call) return;
    sf::Call *c = C(call);
    if (c->kind != sf::CallKind::TwoPhase) return;  // not the caller's to release
    if (c->role == SF_LEADER && sf::call_claim_finish(c)) {
        // Go's Goexit for the two-phase form: nobody may hang on a leader
        // that walked away.
        sf::flight_complete(c->flight, SF_EGOEXIT, 0, nullptr);
    }
    sf::call_drop_notification(c);
    sf::group_drop_handle(c);
    sf::call_unref(c);
}

SF_API int sf_group_forget(sf_group *g, const void *key, size_t key_len) {
    if (!g || bad_key(key, key_len)) return SF_EINVAL;
    return G(g)->forget(key, key_len, false);
}

SF_API int sf_group_forget_unshared(sf_group *g, const void *key, size_t key_len) {
    if (!g || bad_key(key, key_len)) return SF_EINVAL;
    return G(g)->forget(key, key_len, true);
}

SF_API void *sf_result_value(const sf_result *r) { return r ? R(r)->value : nullptr; }

SF_API int sf_result_error(const sf_result *r) { return r ? R(r)->error : 0; }

SF_API const char *sf_result_panic_message(const sf_result *r) {
    return r && R(r)->status == SF_EPANIC ? R(r)->panic_message : nullptr;
}

SF_API sf_result *sf_result_retain(sf_result *r) {
    if (r) sf::flight_retain(R(r));
    return r;
}

SF_API void sf_result_release(sf_result *r) {
    if (r) sf::flight_release(R(r));
}

SF_API int sf_group_stats_get(const sf_group *g, sf_group_stats *out) {
    if (!g || !out || out->version != SF_GROUP_STATS_VERSION) return SF_EINVAL;
    G(g)->stats(out);
    return SF_OK;
}

}  // extern "C"
