#include "core/flight.hpp"

#include <sched.h>
#include <sys/eventfd.h>
#include <cerrno>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <cxxabi.h>

#include "core/alloc.hpp"
#include "core/cache.hpp"
#include "core/group.hpp"
#include "core/platform.hpp"

namespace sf {

using detail::call_cache;
using detail::flight_cache;

namespace {
// Waiters poll this many times before parking: a trivial fn finishes in
// well under a microsecond, and a futex round trip costs several.
constexpr int kSpins = 128;
constexpr int kYields = 2;

const char kPanicDefault[] = "panic";

void run_destroy(sf_destroy_fn destroy, void *value) noexcept {
    if (!destroy) return;
    try {
        destroy(value);
    } catch (...) {
        // destroy must not throw or exit the thread (header); swallowing an
        // exception keeps the boundary shut.
    }
}

void free_message(Flight *f) noexcept {
    if (f->panic_message_owned) detail::dealloc(const_cast<char *>(f->panic_message));
    f->panic_message = nullptr;
    f->panic_message_owned = false;
    detail::dealloc(f->pending_message);
    f->pending_message = nullptr;
}

void deliver(Call *c, Flight *f, int efd, sf_done_fn done, void *payload) noexcept {
    if (efd >= 0) {
        uint64_t one = 1;
        // EAGAIN means the counter is already non-zero: readable, as wanted.
        ssize_t rc = write(efd, &one, sizeof one);
        (void)rc;
    }
    if (done) {
        if (c->kind == CallKind::AsyncFollower) {
            // Give the group back before user code can observe completion:
            // after the callback the group may already be freed.
            group_drop_handle(c);
        }
        int shared = c->role == SF_FOLLOWER ? 1 : f->shared;
        try {
            done(f->status, reinterpret_cast<sf_result *>(f), shared, payload);
        } catch (...) {
            // done must not throw (header); the other callers still get theirs.
        }
    }
}
// Caller holds f->notify_mu.  Links c for notification unless the flight is
// done; returns false when it is (the caller then delivers by itself).
bool link_locked(Call *c, Flight *f) noexcept {
    uint32_t s = f->state.load(std::memory_order_acquire);
    while (!(s & kNotify)) {
        if (s & kDone) return false;
        if (f->state.compare_exchange_weak(s, s | kNotify, std::memory_order_acq_rel)) break;
    }
    if (s & kDone) return false;
    if (c->notify_linked) return true;
    c->notify_linked = true;
    c->refs.fetch_add(1, std::memory_order_relaxed);
    c->notify_next = f->notify_head;
    f->notify_head = c;
    return true;
}
}  // namespace

const char kPanicMessageLost[] = "panic (message lost: out of memory)";

char *copy_message(const char *msg) noexcept {
    std::size_t n = std::strlen(msg) + 1;
    char *p = static_cast<char *>(detail::alloc(n));
    if (p) std::memcpy(p, msg, n);
    return p;
}

Flight *flight_new() noexcept {
    void *mem = flight_cache().get();
    if (!mem) return nullptr;
    Flight *f = new (mem) Flight();
    f->refs.store(1, std::memory_order_relaxed);
    f->key = f->inline_key;
    return f;
}

bool flight_set_key(Flight *f, const void *key, std::size_t len) noexcept {
    if (len > kInlineKey) {
        f->key = static_cast<unsigned char *>(detail::alloc(len));
        if (!f->key) {
            f->key = f->inline_key;
            return false;
        }
    }
    if (len) std::memcpy(f->key, key, len);
    f->key_len = len;
    return true;
}

void flight_retain(Flight *f) noexcept { f->refs.fetch_add(1, std::memory_order_relaxed); }

void flight_release(Flight *f) noexcept {
    // Sole owner (the common uncontended case): nobody can take a new
    // reference without holding one, so no atomic decrement is needed.
    if (f->refs.load(std::memory_order_acquire) != 1 &&
        f->refs.fetch_sub(1, std::memory_order_acq_rel) != 1)
        return;
    sf_destroy_fn destroy = f->destroy;
    void *value = f->value;
    free_message(f);
    if (f->key != f->inline_key) detail::dealloc(f->key);
    f->~Flight();
    flight_cache().put(f);
    run_destroy(destroy, value);
}

Call *call_new() noexcept {
    void *mem = call_cache().get();
    return mem ? new (mem) Call() : nullptr;
}

void call_unref(Call *c) noexcept {
    if (c->refs.load(std::memory_order_acquire) != 1 &&
        c->refs.fetch_sub(1, std::memory_order_acq_rel) != 1)
        return;
    if (c->efd >= 0) close(c->efd);
    Flight *f = c->flight;
    c->~Call();
    call_cache().put(c);
    if (f) flight_release(f);
}

void flight_set_value(Call *c, void *value, sf_destroy_fn destroy) noexcept {
    Flight *f = c ? c->flight : nullptr;
    if (!f || c->role != SF_LEADER || c->finished.load(std::memory_order_acquire) || f->done()) {
        run_destroy(destroy, value);
        return;
    }
    sf_destroy_fn old_destroy = f->destroy;
    void *old_value = f->value;
    f->value = value;
    f->destroy = destroy;
    if (old_value != value) run_destroy(old_destroy, old_value);
}

void flight_complete(Flight *f, int status, int error, const char *message,
                     bool exclusive) noexcept {
    f->status = status;
    f->error = error;
    if (status == SF_EPANIC) {
        const char *msg = message ? message : kPanicDefault;
        char *copy = copy_message(msg);
        f->panic_message = copy ? copy : kPanicMessageLost;
        f->panic_message_owned = copy != nullptr;
    }
    group_flight_completed(f);  // unlinks from the table, sets f->shared

    if (exclusive && !f->shared) {
        // No follower ever joined and the leader's call takes no
        // registrations: nobody else can be looking at the state word.
        f->state.store(kDone, std::memory_order_release);
        return;
    }
    uint32_t old = f->state.exchange(kDone, std::memory_order_acq_rel);
    if (old & kWaiters) detail::futex_wake_all(&f->state);
    if (!(old & kNotify)) return;
    Call *list;
    {
        // A registration sets kNotify and links while holding notify_mu, so
        // taking the lock here waits for its link to be complete.
        std::lock_guard<std::mutex> lock(f->notify_mu);
        list = f->notify_head;
        f->notify_head = nullptr;
        // Snapshot what to deliver while registration is excluded: a caller
        // registering from now on sees kDone and delivers by itself.
        for (Call *c = list; c; c = c->notify_next) {
            c->fire_efd = c->efd;
            c->fire_done = c->done;
            c->fire_payload = c->done_payload;
        }
    }
    while (list) {
        Call *c = list;
        list = c->notify_next;
        deliver(c, f, c->fire_efd, c->fire_done, c->fire_payload);
        call_unref(c);  // the notification's reference
    }
}

bool flight_wait(Flight *f, int64_t timeout_ns) noexcept {
    if (f->done()) return true;
    if (timeout_ns == 0) return false;
    for (int i = 0; i < kSpins; ++i) {
        detail::cpu_relax();
        if (f->done()) return true;
    }
    for (int i = 0; i < kYields; ++i) {
        sched_yield();
        if (f->done()) return true;
    }
    const int64_t deadline = timeout_ns > 0 ? detail::now_ns() + timeout_ns : 0;
    for (;;) {
        uint32_t s = f->state.load(std::memory_order_acquire);
        if (s & kDone) return true;
        if (!(s & kWaiters) &&
            !f->state.compare_exchange_weak(s, s | kWaiters, std::memory_order_acq_rel)) {
            continue;
        }
        int64_t left = -1;
        if (timeout_ns > 0) {
            left = deadline - detail::now_ns();
            if (left <= 0) return f->done();
        }
        if (!detail::futex_wait(&f->state, s | kWaiters, left)) return f->done();
    }
}

int call_on_done(Call *c, sf_done_fn done, void *payload) noexcept {
    Flight *f = c->flight;
    {
        std::lock_guard<std::mutex> lock(f->notify_mu);
        if (c->done_registered) return SF_ESTATE;
        c->done_registered = true;
        c->done = done;
        c->done_payload = payload;
        if (link_locked(c, f)) return SF_OK;
        c->done = nullptr;  // delivered below, not by a completing thread
    }
    deliver(c, f, -1, done, payload);
    return SF_OK;
}

int call_fd(Call *c) noexcept {
    Flight *f = c->flight;
    {
        std::lock_guard<std::mutex> lock(f->notify_mu);
        if (c->efd >= 0) return c->efd;
    }
    int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (efd < 0) return errno == ENOMEM ? SF_ENOMEM : SF_EBUSY;
    bool linked;
    {
        std::lock_guard<std::mutex> lock(f->notify_mu);
        if (c->efd >= 0) {  // another thread won the race; keep its fd
            close(efd);
            return c->efd;
        }
        c->efd = efd;
        linked = link_locked(c, f);
    }
    if (!linked) deliver(c, f, efd, nullptr, nullptr);
    return efd;
}

}  // namespace sf
