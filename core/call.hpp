// The rules of a call: who may set the value, finish, panic, wait, register
// callbacks, give up or release, and what each means in each state.  A call
// handle is the flight itself for its leader, or a Follower record; both
// start with their CallRole byte.  The C layer converts sf_call* to Call*
// and back, and calls nothing else for a handle.
#pragma once

#include <cstdint>

#include "core/flight.hpp"
#include "core/types.hpp"

namespace sf {

// Never defined: a Call* is a Flight* or a Follower*, told apart by the
// role byte both start with.
struct Call;

inline uint8_t call_role_byte(const Call *c) noexcept {
    return *reinterpret_cast<const uint8_t *>(c);  // a char-typed read: no aliasing issue
}
inline bool is_leader(const Call *c) noexcept { return call_role_byte(c) == kRoleLeader; }
inline Flight *as_flight(Call *c) noexcept { return reinterpret_cast<Flight *>(c); }
inline Follower *as_follower(Call *c) noexcept { return reinterpret_cast<Follower *>(c); }
inline Call *as_call(Flight *f) noexcept { return reinterpret_cast<Call *>(f); }
inline Call *as_call(Follower *c) noexcept { return reinterpret_cast<Call *>(c); }
inline Flight *flight_of(Call *c) noexcept {
    return is_leader(c) ? as_flight(c) : as_follower(c)->flight;
}

// kLeader or kFollower.
Status call_role(const Call *c) noexcept;

// The value: ownership passes at once.  Refused (destroyed at once) for a
// null call, a follower, and once the flight is finished.  Inside fn (do, do_async) the
// call belongs to fn's thread; a two-phase leader's may race its finish
// from any thread, and the value is never written after completion.
void call_set_value_slow(Call *c, void *value, DestroyFn destroy) noexcept;
inline void call_set_value(Call *c, void *value, DestroyFn destroy) noexcept {
    if (c && is_leader(c)) {
        Flight *f = as_flight(c);
        if (f->mode != kModeTwoPhase && !(f->state.load(std::memory_order_relaxed) & kFinished)) {
            // fn's own call, on fn's thread (see call.cpp).
            const DestroyFn old_destroy = f->destroy;
            void *const old_value = f->value;
            f->value = value;
            f->destroy = destroy;
            if (old_destroy && old_value != value) run_destroy(old_destroy, old_value);
            return;
        }
    }
    call_set_value_slow(c, value, destroy);
}

// The value as bytes (SF_1.2): a copy of data, owned by the flight.  kOk;
// kBadState when the call may not set a value (as call_set_value refuses
// one); kNoMemory.
Status call_set_bytes(Call *c, const void *data, std::size_t len) noexcept;

// Two-phase completion: kOk, or kBadState (a follower, already finished,
// or fn's call of do/do_async, which fn's return finishes).
Status call_finish(Call *c, int error) noexcept;
// kOk; inside fn of do/do_async it marks the flight to panic when fn
// returns.  kBadState as for finish.
Status call_panic(Call *c, const char *message) noexcept;

// SF_1.1: finishes a two-phase leader's flight and releases the handle in
// one step, if no follower has joined: returns 0 and the handle is gone.
// When a follower has joined, returns 1 and changes nothing (set the value,
// finish and release as usual).  kBadState when c is not an unfinished
// two-phase leader.
int call_finish_unshared(Call *c, int error) noexcept;

// Waits for the outcome: kOk, kPanic, kGoexit with *result a new reference
// (when result is not null) and *shared; kTimedOut; kDeadlock (see the
// header); kCanceled after call_cancel, also when the cancel comes from
// another thread while this one waits.
Status call_wait(Call *c, int64_t timeout_ns, Flight **result, bool *shared) noexcept;

// Registrations (two-phase handles only: kBadState otherwise).
Status call_on_done(Call *c, DoneCallback cb) noexcept;
int call_fd(Call *c) noexcept;

// Drops the handle (two-phase only; other handles are not the caller's).
// An unfinished leader's release completes the flight as kGoexit.  A
// follower that leaves before completion gives back its interest.
void call_release(Call *c) noexcept;

// SF_1.1: the caller gives up.  Its interest goes; its own wait returns
// kCanceled from now on (a wait under way on another thread is woken) and
// its done callback runs now with kCanceled (if it has not run), last, so
// that it may release the handle; a leader keeps the right, and the duty,
// to finish.  When
// no interested party is left while fn runs, the flight is abandoned: it
// leaves the table (a new caller starts afresh) and its abandon callback
// runs, on this thread.  Returns 1 when this call abandoned the flight, 0
// when it did not; kBadState when the flight already completed, the handle
// already gave up, or it is fn's call of do/do_async.
int call_cancel(Call *c) noexcept;

// SF_1.1: a two-phase leader's flight is led by no thread from now on (its
// work runs elsewhere), so no wait or do on its key is a deadlock of the
// thread that began it.  kBadState for a follower or fn's call.
Status call_disown(Call *c) noexcept;
// SF_1.2: a two-phase leader's flight is led by the calling thread, whose
// work runs there: a follower waiting forever on this thread is then a
// deadlock (kDeadlock), and so is a do of the key here.  kBadState as for
// call_disown.
Status call_lead_here(Call *c) noexcept;

// SF_1.1: 1 once the flight has been abandoned, else 0.
int call_abandoned(Call *c) noexcept;
// SF_1.1: runs cb once the flight is abandoned (at once if it is).  Leader
// handles only; one per flight (kBadState for a second); kNoMemory.
Status call_on_abandon(Call *c, AbandonCallback cb) noexcept;

// Whether the flight's outcome is shared with a follower (for the leader).
inline bool flight_shared(const Flight *f) noexcept {
    return f->state.load(std::memory_order_acquire) & kShared;
}

}  // namespace sf
