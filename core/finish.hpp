// Finishing a flight: the one place that takes a flight out of the table at
// its end, counts it, publishes its outcome and wakes whoever waits for it.
// Every way a flight ends comes here: fn returning (do, do_async), a
// two-phase finish or panic, a leader released early (Goexit), a refused
// do_async, and the two uncontended shortcuts (a do whose fn returned with
// nobody joined, and sf_call_finish_unshared).
#pragma once

#include <atomic>
#include <cstdint>

#include "core/flight.hpp"
#include "core/platform.hpp"
#include "core/stats.hpp"
#include "core/table.hpp"
#include "core/types.hpp"

namespace sf {

// The leader's completion, for every mode: takes the flight out of the
// table (or waits for whoever did), folds the joiners, counts, publishes
// the outcome and wakes everyone.  For kPanic, message is copied; NULL
// keeps a message sf_call_panic left pending inside fn.
void finish(Flight *f, Status status, int error, const char *message) noexcept;

// Publishes the outcome of a flight already out of the table with its
// joiners folded (kShared set if anyone joined): status, error, message,
// then kDone, then futex waiters, eventfds and done callbacks.
void publish_outcome(Flight *f, Status status, int error, const char *message) noexcept;

// The wake after an outcome was stored with kDone: futex waiters when
// `seen` (the state before) had kWaiters, registrations when kNotify.
void publish_wake(Flight *f, uint32_t seen) noexcept;

// ---------------------------------------------------------------------------
// The uncontended end, inline
// ---------------------------------------------------------------------------

// The outcome of a flight that nobody else can write to any more (never
// joined, out of the table, and only its own caller holds it): one release
// store.  s: the state word as it is, plus any bits to set with kDone
// (kUnpublished).  A waiter racing the store finds the word changed and
// looks again; the caller wakes whoever s says asked (publish_wake).
SF_HOT void store_ok_alone(Flight *f, int error, uint32_t s) noexcept {
    f->status_ = int8_t(kOk);
    f->error = error;
    f->state.store(s | kDone | kFinished, std::memory_order_release);
}

// fn returned error without asking for a panic.  The uncontended form of a
// do flight (still alone in its home slot, nobody joined) is one CAS out of
// the table, a count and a store; anything else is finish().  home: the
// key's home slot; counts: the calling thread's stats stripe.
SF_HOT void finish_do_ok(Flight *f, int error, Table::Home home, Stats &stats,
                         Stats::Mine counts) noexcept {
    // Success also means f is no orphan of a fork: the child's table
    // starts empty.
    if (__builtin_expect(Table::unpublish_alone(home, f), 1)) {
        stats.add(counts, kCompleted);
        const uint32_t s = f->state.load(std::memory_order_relaxed);
        // A do flight takes no registration but its joiners': without one,
        // nobody else writes the state word any more.
        if (__builtin_expect(!(s & (kShared | kNotify | kLocked | kWaiters)), 1))
            return store_ok_alone(f, error, s);
        return publish_outcome(f, kOk, error, nullptr);
    }
    finish(f, kOk, error, nullptr);
}

// A two-phase leader's finish without a value when nobody joined (the
// rule of sf_call_finish_unshared): 0 when it finished the flight (the
// caller then releases the handle), 1 when someone joined (nothing
// changed), kBadState when the flight is finished already.  table and
// stats: f's group's; counts: the calling thread's stripe.
SF_HOT int finish_unshared(Flight *f, int error, Table &table, Stats &stats,
                           Stats::Mine counts) noexcept {
    if (flight_orphaned(f)) return 1;  // a fork's child: the usual way knows orphans
    const uint32_t s = f->state.load(std::memory_order_acquire);
    if (s & kFinished) return kBadState;
    // Someone joined (or joined and left, or a forget or an abandonment
    // took the flight out): the usual way, with a value.
    if (s & (kShared | kUnpublished)) return 1;
    // Out of the table only if nobody joined: one CAS, after which nobody
    // can join.
    if (!table.unpublish_if_unjoined(f)) return 1;
    // From here nobody else can write the state word: no follower exists
    // or can join, forget and abandonment need the flight in the table or
    // a party other than the leader, and the leader's handle is its
    // caller's alone (sf_call_finish_unshared may release it, so, like
    // sf_call_release, it must not race with another use of the handle).
    // So the completion is one plain release store, not two more
    // read-modify-writes: this path is every uncontended Go and Python
    // call.  A set_value or finish on another thread is such a race: one
    // already under way when we look gets the careful way below; one that
    // starts later is the caller's race, as with sf_call_release.
    uint32_t old = f->state.load(std::memory_order_relaxed);
    if (__builtin_expect(old & (kFinished | kWriting), 0)) {
        if (!flight_take_leader_bit(f, kFinished)) {
            f->state.fetch_or(kUnpublished, std::memory_order_release);
            return kBadState;
        }
        old = f->state.load(std::memory_order_relaxed);
    }
    stats.add(counts, kCompleted);
    store_ok_alone(f, error, old | kUnpublished);
    if (old & (kWaiters | kNotify)) publish_wake(f, old);  // the leader's own registration
    return 0;
}

}  // namespace sf
