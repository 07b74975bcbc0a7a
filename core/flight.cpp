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

void free_message(Flight *f) noexcept {
    if (f->panic_message_owned) detail::dealloc(const_cast<char *>(f->panic_message));
    f->panic_message = nullptr;
    f->panic_message_owned = false;
    detail::dealloc(f->pending_message);
    f->pending_message = nullptr;
}

// Callers disable cancellation: write is a cancellation point.
void signal_fd(int efd) noexcept {
    if (efd < 0) return;
    uint64_t one = 1;
    // EAGAIN means the counter is already non-zero: readable, as wanted.
    ssize_t rc = write(efd, &one, sizeof one);
    (void)rc;
}

// Callers disable cancellation (done may reach cancellation points).
void deliver(Call *c, Flight *f, int efd, sf_done_fn done, void *payload) noexcept {
    signal_fd(efd);
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

void run_destroy(sf_destroy_fn destroy, void *value) noexcept {
    if (!destroy) return;
    detail::NoCancel no_cancel;
    try {
        destroy(value);
    } catch (...) {
        // destroy must not throw or exit the thread (header); swallowing an
        // exception keeps the boundary shut.
    }
}

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
    if (c->efd >= 0) {
        detail::NoCancel no_cancel;  // close is a cancellation point
        close(c->efd);
    }
    Flight *f = c->flight;
    c->~Call();
    call_cache().put(c);
    if (f) flight_release(f);
}

void flight_set_value(Call *c, void *value, sf_destroy_fn destroy) noexcept {
    Flight *f = c ? c->flight : nullptr;
    bool writing = false;
    if (f && c->role == SF_LEADER) {
        uint8_t s = kOpen;
        while (!c->lstate.compare_exchange_weak(s, kWriting, std::memory_order_acquire,
                                                std::memory_order_relaxed)) {
            if (s == kFinished) break;
            if (s == kWriting) detail::cpu_relax();  // another set_value stores
            s = kOpen;
        }
        writing = s == kOpen;
    }
    if (!writing) {
        run_destroy(destroy, value);
        return;
    }
    sf_destroy_fn old_destroy = f->destroy;
    void *old_value = f->value;
    f->value = value;
    f->destroy = destroy;
    c->lstate.store(kOpen, std::memory_order_release);
    if (old_value != value) run_destroy(old_destroy, old_value);
}

bool call_claim_finish(Call *c) noexcept {
    uint8_t s = kOpen;
    while (!c->lstate.compare_exchange_weak(s, kFinished, std::memory_order_acq_rel,
                                            std::memory_order_acquire)) {
        if (s == kFinished) return false;
        if (s == kWriting) detail::cpu_relax();  // let the value land first
        s = kOpen;
    }
    return true;
}

bool call_finished(const Call *c) noexcept {
    return c->lstate.load(std::memory_order_acquire) == kFinished;
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
    detail::NoCancel no_cancel;  // eventfd writes and done callbacks below
    Call *list;
    {
        // A registration sets kNotify and links while holding notify_mu, so
        // taking the lock here waits for its link to be complete.
        std::lock_guard<std::mutex> lock(f->notify_mu);
        list = f->notify_head;
        f->notify_head = nullptr;
        // Snapshot what to deliver while registration is excluded: a caller
        // registering from now on sees kDone and delivers by itself.  The
        // eventfds are written here, under the lock, because sf_call_release
        // closes a call's fd under it: an fd number is never written after
        // it was closed (and perhaps reused by the process).
        for (Call *c = list; c; c = c->notify_next) {
            signal_fd(c->efd);
            c->fire_done = c->done;
            c->fire_payload = c->done_payload;
        }
    }
    while (list) {
        Call *c = list;
        list = c->notify_next;
        deliver(c, f, -1, c->fire_done, c->fire_payload);
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
    const int64_t deadline = timeout_ns > 0 ? detail::deadline_after(detail::now_ns(), timeout_ns) : 0;
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
    detail::NoCancel no_cancel;
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
            detail::NoCancel no_cancel;
            close(efd);
            return c->efd;
        }
        c->efd = efd;
        linked = link_locked(c, f);
        if (!linked) {
            detail::NoCancel no_cancel;
            signal_fd(efd);  // under the lock, as completion does
        }
    }
    return efd;
}

void call_drop_notification(Call *c) noexcept {
    Flight *f = c->flight;
    int efd;
    bool unlinked = false;
    {
        std::lock_guard<std::mutex> lock(f->notify_mu);
        efd = c->efd;
        c->efd = -1;
        // Still on the flight's list (not yet taken by a completing thread)
        // and there only for its eventfd: nothing is left to deliver.
        if (c->notify_linked && !c->done && !f->done()) {
            for (Call **pp = &f->notify_head; *pp; pp = &(*pp)->notify_next) {
                if (*pp == c) {
                    *pp = c->notify_next;
                    c->notify_linked = false;
                    unlinked = true;
                    break;
                }
            }
        }
    }
    // The notification's reference; the owner's keeps c alive.
    if (unlinked) c->refs.fetch_sub(1, std::memory_order_acq_rel);
    if (efd >= 0) {
        detail::NoCancel no_cancel;
        close(efd);
    }
}

}  // namespace sf
