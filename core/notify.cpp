#include "core/notify.hpp"

#include <cerrno>
#include <cstdint>

#include "core/cache.hpp"
#include "core/platform.hpp"

namespace sf {

namespace {
// Callers disable cancellation: write is a cancellation point.
void signal_fd(int efd) noexcept { detail::event_fd_signal(efd); }

// What a registration's done callback receives as `shared`: 1 for a
// follower, and for the leader's own registration whether anyone joined.
bool shared_for(const Follower *c) noexcept {
    return c->role != kRoleLeader || (c->flight->state.load(std::memory_order_acquire) & kShared);
}

void invoke_done(const Follower *c, const DoneCallback &cb) noexcept {
    Flight *f = c->flight;
    cb.invoke(cb.fn, cb.payload, f->status(), f, shared_for(c));
}

// Caller holds f's lock.  Links c unless f is done; false when it is (the
// caller then delivers by itself).
bool link_locked(Flight *f, Follower *c) noexcept {
    // kNotify goes on only while kDone is off, in one CAS: a completion
    // that sets kDone afterwards sees kNotify and takes the list (which
    // waits for our lock); one that set it before makes us deliver.
    uint32_t s = f->state.load(std::memory_order_acquire);
    do {
        if (s & kDone) return false;
    } while (!(s & kNotify) &&
             !f->state.compare_exchange_weak(s, s | kNotify, std::memory_order_acq_rel,
                                             std::memory_order_acquire));
    if (c->flags.load(std::memory_order_relaxed) & kLinked) return true;
    c->flags.fetch_or(uint8_t(kLinked), std::memory_order_relaxed);
    c->refs.fetch_add(1, std::memory_order_relaxed);  // the notification's
    c->prev = nullptr;
    c->next = f->notify_head;
    if (c->next) c->next->prev = c;
    f->notify_head = c;
    return true;
}

void unlink_locked(Flight *f, Follower *c) noexcept {
    if (c->prev) c->prev->next = c->next;
    else f->notify_head = c->next;
    if (c->next) c->next->prev = c->prev;
    c->next = c->prev = nullptr;
    c->flags.fetch_and(uint8_t(~kLinked), std::memory_order_relaxed);
}
}  // namespace

Follower *follower_new(Flight *f, uint8_t role) noexcept {
    auto *c = static_cast<Follower *>(detail::call_cache().get());
    if (!c) return nullptr;
    c->role = role;
    c->mode = f->mode;
    c->flags.store(0, std::memory_order_relaxed);
    c->firing = 0;
    c->refs.store(1, std::memory_order_relaxed);
    c->flight = f;
    c->next = c->prev = nullptr;
    c->done = DoneCallback{nullptr, nullptr, nullptr};
    c->efd = -1;
    c->epoch = 0;
    c->work = WorkCallback{nullptr, nullptr, nullptr};
    return c;
}

void follower_unref(Follower *c) noexcept {
    if (c->refs.load(std::memory_order_acquire) != 1 &&
        c->refs.fetch_sub(1, std::memory_order_acq_rel) != 1)
        return;
    if (c->efd >= 0) {
        detail::NoCancel no_cancel;  // close is a cancellation point
        detail::fd_close(c->efd);
    }
    Flight *f = c->flight;
    // The leader's registration uses its handle's reference; a follower that
    // left gave its reference back already.
    const bool owns_flight_ref =
        c->role != kRoleLeader && !(c->flags.load(std::memory_order_relaxed) & kNoRef);
    detail::call_cache().put(c);
    if (owns_flight_ref) flight_release(f);
}

Status notify_on_done(Follower *c, DoneCallback cb) noexcept {
    Flight *f = c->flight;
    flight_lock(f);
    const uint8_t flags = c->flags.load(std::memory_order_relaxed);
    if (flags & kDoneSet) {
        flight_unlock(f);
        return kBadState;
    }
    c->flags.fetch_or(uint8_t(kDoneSet), std::memory_order_relaxed);
    c->done = cb;
    // A caller that gave up hears of that, now, and never of the result:
    // the result of a flight it left (or that every caller left) reaches
    // it no other way either.
    const bool cancelled = flags & kCancelled;
    const bool linked = !cancelled && link_locked(f, c);
    flight_unlock(f);
    if (!linked) {
        detail::NoCancel no_cancel;  // done may reach cancellation points
        if (cancelled) {
            cb.invoke(cb.fn, cb.payload, kCanceled, nullptr, shared_for(c));
        } else {
            invoke_done(c, cb);
        }
    }
    return kOk;
}

int notify_fd(Follower *c) noexcept {
    Flight *f = c->flight;
    flight_lock(f);
    int have = c->efd;
    flight_unlock(f);
    if (have >= 0) return have;
    const int efd = detail::event_fd_open();
    if (efd < 0) return efd;
    detail::NoCancel no_cancel;  // close and write below
    flight_lock(f);
    have = c->efd;
    if (have < 0) {
        c->efd = efd;
        // Given up, or done already: readable now.
        if ((c->flags.load(std::memory_order_relaxed) & kCancelled) || !link_locked(f, c))
            signal_fd(efd);
    }
    flight_unlock(f);
    if (have >= 0) {  // another thread won the race; keep its fd
        detail::fd_close(efd);
        return have;
    }
    return efd;
}

void notify_drop(Follower *c) noexcept {
    Flight *f = c->flight;
    flight_lock(f);
    const int efd = c->efd;
    c->efd = -1;
    // Still on the list (completion has not taken it) and there only for
    // its eventfd: nothing is left to deliver.
    const bool unlink = (c->flags.load(std::memory_order_relaxed) & kLinked) &&
                        !(c->flags.load(std::memory_order_relaxed) & kDoneSet);
    if (unlink) unlink_locked(f, c);
    flight_unlock(f);
    if (unlink) c->refs.fetch_sub(1, std::memory_order_relaxed);  // the owner's keeps c
    if (efd >= 0) {
        detail::NoCancel no_cancel;
        detail::fd_close(efd);
    }
}

Follower *leader_registration(Flight *f) noexcept {
    flight_lock(f);
    Ext *e = flight_ext(f);
    Follower *reg = e ? e->leader_reg : nullptr;
    if (e && !reg) {
        reg = follower_new(f, kRoleLeader);
        e->leader_reg = reg;
        // Made after the leader's caller gave up (sf_call_cancel sets
        // kLeaderLeft under this lock): it has given up too.
        if (reg && (f->state.load(std::memory_order_relaxed) & kLeaderLeft))
            reg->flags.fetch_or(uint8_t(kCancelled | kLeft), std::memory_order_seq_cst);
    }
    flight_unlock(f);
    return reg;
}

void notify_completion(Flight *f) noexcept {
    detail::NoCancel no_cancel;  // eventfd writes and done callbacks below
    flight_lock(f);
    Follower *list = f->notify_head;
    f->notify_head = nullptr;
    for (Follower *c = list; c; c = c->next) {
        signal_fd(c->efd);
        c->flags.fetch_and(uint8_t(~kLinked), std::memory_order_relaxed);  // the list is ours now
        // Decided under the lock; c->done is final once kDoneSet is (on_done
        // stores both under it before linking).
        c->firing = (c->flags.load(std::memory_order_relaxed) & kDoneSet) ? 1 : 0;
    }
    flight_unlock(f);
    while (list) {
        Follower *c = list;
        list = c->next;
        if (c->firing) invoke_done(c, c->done);
        follower_unref(c);  // the notification's reference
    }
}

bool notify_cancel_locked(Flight *f, Follower *c) noexcept {
    const uint8_t flags = c->flags.fetch_or(uint8_t(kCancelled), std::memory_order_seq_cst);
    const bool fire = (flags & kDoneSet) && (flags & kLinked);
    if (fire) unlink_locked(f, c);  // its notification reference is ours now
    detail::NoCancel no_cancel;     // write is a cancellation point
    signal_fd(c->efd);
    return fire;
}

void notify_run_cancelled(Follower *c) noexcept {
    {
        detail::NoCancel no_cancel;  // done may reach cancellation points
        c->done.invoke(c->done.fn, c->done.payload, kCanceled, nullptr, shared_for(c));
    }
    follower_unref(c);
}

}  // namespace sf
