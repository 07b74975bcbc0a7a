#include "core/call.hpp"

#include "core/alloc.hpp"
#include "core/finish.hpp"
#include "core/group.hpp"
#include "core/notify.hpp"
#include "core/platform.hpp"
#include "core/shared.hpp"
#include "core/thread.hpp"
#if defined(SF_TESTING_HOOKS)
#include "core/testing.hpp"
#endif

namespace sf {

#if defined(SF_TESTING_HOOKS)
namespace {
struct PauseHook {
    std::atomic<void (*)(void *)> hook{nullptr};
    std::atomic<void *> payload{nullptr};
};
PauseHook g_pauses[int(testing::Point::kCount)];

void pause_at(testing::Point point) noexcept {
    PauseHook &p = g_pauses[int(point)];
    if (void (*hook)(void *) = p.hook.load(std::memory_order_acquire))
        hook(p.payload.load(std::memory_order_relaxed));
}
}  // namespace

void testing::set_pause(Point point, void (*hook)(void *), void *payload) noexcept {
    PauseHook &p = g_pauses[int(point)];
    p.payload.store(payload, std::memory_order_relaxed);
    p.hook.store(hook, std::memory_order_release);
}
#define SF_PAUSE_POINT(point) pause_at(testing::Point::point)
#else
#define SF_PAUSE_POINT(point) ((void)0)
#endif

namespace {

bool claim_finish(Flight *f) noexcept { return flight_take_leader_bit(f, kFinished); }

// The handle accounting sf_group_free consults.
void uncount_handle(Flight *f, uint32_t epoch) noexcept {
    // A handle made before a fork is not counted in the child's group.
    if (epoch == current_epoch()) f->group->stats().sub(kHandles);
}

// ---------------------------------------------------------------------------
// interest and abandonment
//
// The parties interested in a flight are its leader's caller and each
// follower.  The count is split like the references: interest holds the
// leader and every folded joiner, the slot word's joiner count holds the
// rest.  A party leaving decrements one and then reads the other (both
// seq_cst), so of two parties leaving at once at least one sees the total
// reach zero.
// ---------------------------------------------------------------------------

// Runs the abandon callback once, if fn is still running.  true when this
// call did.  kAbandoned is set under the flight's lock, where
// sf_call_on_abandon stores the callback and looks at kAbandoned: of a
// registration and an abandonment at the same time exactly one runs the
// callback.  The CAS still fails if the leader claims kFinished meanwhile
// (claim_finish takes no lock): then completion came first.
bool mark_abandoned(Flight *f) noexcept {
    flight_lock(f);
    uint32_t s = f->state.load(std::memory_order_relaxed);
    do {
        if (s & (kFinished | kDone | kAbandoned)) {
            flight_unlock(f);
            return false;
        }
    } while (!f->state.compare_exchange_weak(s, s | kAbandoned, std::memory_order_acq_rel,
                                             std::memory_order_relaxed));
    Ext *e = f->ext.load(std::memory_order_relaxed);
    const AbandonCallback cb = e ? e->abandon : AbandonCallback{nullptr, nullptr, nullptr};
    flight_unlock(f);
    if (!flight_orphaned(f)) f->group->stats().add(kAbandons);
    if (cb.invoke) {
        detail::NoCancel no_cancel;
        cb.invoke(cb.fn, cb.payload, f);
    }
    return true;
}

// After a party left: abandon f when nobody interested is left while fn
// still runs.  Only two-phase flights can be abandoned: the callers of do
// and do_async cannot give up.
bool check_abandoned(Flight *f) noexcept {
    if (f->mode != kModeTwoPhase || flight_orphaned(f)) return false;
    uint32_t s = f->state.load(std::memory_order_seq_cst);
    if (s & (kFinished | kDone | kAbandoned)) return false;
    if (f->interest.load(std::memory_order_seq_cst) > 0) return false;
    SF_PAUSE_POINT(kAbandonUnpublish);
    if (!(s & kUnpublished)) {
        // Joiners still in the slot are interested.  Without any, take the
        // flight out of the table, so nobody new joins work that stops.
        if (f->group->table().unpublish_if_unjoined(f)) {
            f->state.fetch_or(kUnpublished, std::memory_order_release);
            return mark_abandoned(f);
        }
        // Someone joined (they check again when they leave), or someone
        // took the flight out just now.
        if (f->group->table().holds(f)) return false;
        // A forget, another leaving party or a fork sets kUnpublished after
        // its fold: then count again, exactly.  The leader completing sets
        // no such mark (nobody waits for its fold), but it claimed kFinished
        // before it took the flight out, and a finished flight is never
        // abandoned.  Waiting for kUnpublished alone spun forever there.
        if (flight_wait_unpublished(f, kUnpublished | kFinished) & kFinished) return false;
    }
    // Out of the table: every joiner is folded and the count is exact.
    return f->interest.load(std::memory_order_seq_cst) == 0 && mark_abandoned(f);
}

// A follower leaves before the end: its interest goes, and its reference
// too unless it keeps the result for a callback still to run.  A joiner
// still in the slot's count takes itself out of it (that is both its
// interest and its reference); a kept reference moves into the flight's
// own count first, so the flight can never be freed in between.
bool follower_leaves(Flight *f, bool keep_reference) noexcept {
    if (flight_orphaned(f)) {
        if (!keep_reference) flight_release(f);
        return false;
    }
    // A joiner counts as shared even when it leaves (Go's dups): marked
    // before unjoining, so a leader that sees the count gone sees the mark.
    f->state.fetch_or(kShared, std::memory_order_seq_cst);
    // A reference of f's own first: unjoining gives the slot's reference
    // away, and f must stay ours until we are done with it (and after, if
    // the caller keeps it).
    f->refs.fetch_add(1, std::memory_order_relaxed);
    if (!f->group->table().unjoin(f)) {
        // Folded already: our reference and interest are f's own.  We hold
        // two references now, so giving one back cannot free f.
        f->refs.fetch_sub(1, std::memory_order_relaxed);
        f->interest.fetch_sub(1, std::memory_order_seq_cst);
    }
    const bool abandoned = check_abandoned(f);
    if (!keep_reference) flight_release(f);
    return abandoned;
}

}  // namespace

// ---------------------------------------------------------------------------
// the call's rules
// ---------------------------------------------------------------------------

Status call_role(const Call *c) noexcept {
    return call_role_byte(c) == kRoleFollower ? kFollower : kLeader;
}

namespace {
// Stores the value, or refuses it (destroys it at once): false then.
bool store_value(Call *c, void *value, DestroyFn destroy) noexcept {
    if (!c || !is_leader(c)) {
        run_destroy(destroy, value);
        return false;
    }
    Flight *f = as_flight(c);
    // fn's call belongs to fn's thread (the header): no other thread writes
    // the value, and completion comes after fn returns.  A two-phase
    // leader's handle may be shared, so the store holds kWriting, which a
    // completer waits out.
    const bool two_phase = f->mode == kModeTwoPhase;
    if (two_phase ? !flight_take_leader_bit(f, kWriting)
                  : (f->state.load(std::memory_order_relaxed) & kFinished) != 0) {
        run_destroy(destroy, value);
        return false;
    }
    DestroyFn old_destroy = f->destroy;
    void *old_value = f->value;
    f->value = value;
    f->destroy = destroy;
    if (two_phase) f->state.fetch_and(~uint32_t(kWriting), std::memory_order_release);
    if (old_value != value) run_destroy(old_destroy, old_value);
    return true;
}
}  // namespace

void call_set_value_slow(Call *c, void *value, DestroyFn destroy) noexcept {
    // A shared group's call takes this way (its role byte is no leader's).
    if (c && call_role_byte(c) == kRoleSharedCall)
        return shared_set_value(reinterpret_cast<SharedCall *>(c), value, destroy);
    store_value(c, value, destroy);
}

Status call_set_bytes(Call *c, const void *data, std::size_t len) noexcept {
    if (!is_leader(c)) return kBadState;  // nothing copied for a follower
    DestroyFn destroy;
    void *copy = bytes_copy(data, len, &destroy);
    if (!copy) return kNoMemory;
    return store_value(c, copy, destroy) ? kOk : kBadState;
}

Status call_finish(Call *c, int error) noexcept {
    if (!is_leader(c)) return kBadState;
    Flight *f = as_flight(c);
    if (f->mode != kModeTwoPhase || !claim_finish(f)) return kBadState;
    finish(f, kOk, error, nullptr);
    return kOk;
}

Status call_panic(Call *c, const char *message) noexcept {
    if (!is_leader(c)) return kBadState;
    Flight *f = as_flight(c);
    if (f->mode == kModeTwoPhase) {
        if (!claim_finish(f)) return kBadState;
        finish(f, kPanic, 0, message);
        return kOk;
    }
    // Inside fn: remembered until fn returns (the first request wins).
    if (f->state.load(std::memory_order_relaxed) & kFinished) return kBadState;
    if (f->lflags & kPanicPending) return kOk;
    f->lflags = uint8_t(f->lflags | kPanicPending);
    Ext *e = flight_ext(f);
    if (!e) {
        if (message) f->lflags = uint8_t(f->lflags | kMessageLost);
    } else if (message) {
        char *copy = copy_message(message);
        e->message = copy ? copy : kPanicMessageLost;
        if (copy) f->lflags = uint8_t(f->lflags | kMessageOwned);
    }
    return kOk;
}

int call_finish_unshared(Call *c, int error) noexcept {
    if (!is_leader(c)) return kBadState;
    Flight *f = as_flight(c);
    if (f->mode != kModeTwoPhase) return kBadState;
    Group *g = f->group;
    const Stats::Mine counts = g->stats().mine();
    const int rc = finish_unshared(f, error, g->table(), g->stats(), counts);
    if (rc != 0) return rc;
    // The release, which needs no Goexit: finished.
    if (Ext *e = f->ext.load(std::memory_order_acquire)) {
        if (Follower *reg = e->leader_reg) {
            notify_drop(reg);
            follower_unref(reg);
        }
    }
    g->stats().add(counts, kHandles, uint64_t(0) - 1);
    flight_release(f);
    return 0;
}

// A follower's wait that only the calling thread could end: the flight's
// fn runs on this thread (we are inside it), or a two-phase flight whose
// caller asked for the check (sf_call_lead_here).  A two-phase flight
// begun here is not enough: its leader's handle may be finished by
// another thread (the 1.0 rule).
bool waits_for_itself(const Flight *f) noexcept {
    const uint64_t t = f->leader_thread.load(std::memory_order_relaxed);
    if ((t & ~kStrictLead) != detail::thread_serial()) return false;
    return f->mode != kModeTwoPhase || (t & kStrictLead) != 0;
}

Status call_wait(Call *c, int64_t timeout_ns, Flight **result, bool *shared) noexcept {
    Flight *f = flight_of(c);
    const bool leader = is_leader(c);
    if (leader) {
        if (f->state.load(std::memory_order_relaxed) & kLeaderLeft) return kCanceled;
        if (!f->done()) return kDeadlock;  // waiting for itself
    } else {
        const std::atomic<uint8_t> &flags = as_follower(c)->flags;
        // A caller that gave up hears nothing else, even once the flight
        // completed: cancel succeeded only while it had not.
        if (flags.load(std::memory_order_seq_cst) & kCancelled) return kCanceled;
        if (timeout_ns < 0 && !f->done() && waits_for_itself(f)) return kDeadlock;
        switch (flight_wait(f, timeout_ns, &flags)) {
            case kWaitDone:
                break;
            case kWaitCancelled:
                return kCanceled;
            case kWaitTimedOut:
                // A poll (timeout 0) is a question, not a wait that gave up.
                if (timeout_ns > 0 && !flight_orphaned(f)) f->group->stats().add(kTimeouts);
                return kTimedOut;
        }
    }
    if (result) {
        flight_retain(f);
        *result = f;
    }
    *shared = leader ? flight_shared(f) : true;
    return f->status();
}

Status call_on_done(Call *c, DoneCallback cb) noexcept {
    if (is_leader(c)) {
        Flight *f = as_flight(c);
        if (f->mode != kModeTwoPhase) return kBadState;
        Follower *reg = leader_registration(f);
        return reg ? notify_on_done(reg, cb) : kNoMemory;
    }
    return notify_on_done(as_follower(c), cb);
}

int call_fd(Call *c) noexcept {
    if (is_leader(c)) {
        Flight *f = as_flight(c);
        if (f->mode != kModeTwoPhase) return kBadState;
        Follower *reg = leader_registration(f);
        return reg ? notify_fd(reg) : kNoMemory;
    }
    return notify_fd(as_follower(c));
}

void call_release(Call *c) noexcept {
    if (is_leader(c)) {
        Flight *f = as_flight(c);
        if (f->mode != kModeTwoPhase) return;  // fn's call is not the caller's to release
        // Go's Goexit for the two-phase form: nobody may hang on a leader
        // that walked away.
        if (claim_finish(f)) finish(f, kGoexit, 0, nullptr);
        if (Ext *e = f->ext.load(std::memory_order_acquire)) {
            if (Follower *reg = e->leader_reg) {
                notify_drop(reg);
                follower_unref(reg);
            }
        }
        uncount_handle(f, f->epoch);
        flight_release(f);
        return;
    }
    Follower *fo = as_follower(c);
    Flight *f = fo->flight;
    notify_drop(fo);
    if (fo->flags.load(std::memory_order_relaxed) & kCounted) uncount_handle(f, fo->epoch);
    // Completion sets kDone before it takes the lock to empty the list, so
    // under the lock "not done" means the list is still as we see it.
    flight_lock(f);
    const bool leaving = !(f->state.load(std::memory_order_relaxed) & kDone) &&
                         !(fo->flags.load(std::memory_order_relaxed) & kLeft);
    const bool callback_pending = (fo->flags.load(std::memory_order_relaxed) & kDoneSet) &&
                                  (fo->flags.load(std::memory_order_relaxed) & kLinked);
    fo->flags.fetch_or(uint8_t(kLeft | (leaving && !callback_pending ? kNoRef : 0)),
                       std::memory_order_relaxed);
    flight_unlock(f);
    // Leaving before the end: the interest goes now; the reference stays
    // with the record while its done callback is still to run.
    if (leaving) follower_leaves(f, callback_pending);
    follower_unref(fo);
}

// Giving up is decided under the flight's lock, where completion takes the
// notify list: a cancel that sees the flight not done there wins (the
// caller's done callback, its wait and its eventfd all say kCanceled), one
// that comes after loses (kBadState, and the result reaches the caller).
// The caller's done callback runs last, after this call has finished with
// the flight: the callback may release the handle it is told about.
int call_cancel(Call *c) noexcept {
    Flight *f = flight_of(c);
    Follower *fire = nullptr;
    if (is_leader(c)) {
        if (f->mode != kModeTwoPhase) return kBadState;  // fn's caller cannot give up
        flight_lock(f);
        uint32_t s = f->state.load(std::memory_order_relaxed);
        // The CAS (not an OR): a claim_finish, which takes no lock, makes
        // it fail and is seen on the retry.
        do {
            if (s & (kFinished | kDone | kLeaderLeft)) {
                flight_unlock(f);
                return kBadState;
            }
        } while (!f->state.compare_exchange_weak(s, s | kLeaderLeft, std::memory_order_acq_rel,
                                                 std::memory_order_relaxed));
        // The leader's own registration hears it now, as a follower would.
        Ext *e = f->ext.load(std::memory_order_relaxed);
        if (Follower *reg = e ? e->leader_reg : nullptr) {
            reg->flags.fetch_or(uint8_t(kLeft), std::memory_order_relaxed);
            if (notify_cancel_locked(f, reg)) fire = reg;
        }
        flight_unlock(f);
        if (!flight_orphaned(f)) f->group->stats().add(kCancels);
        // The leader keeps the right, and the duty, to finish.
        f->interest.fetch_sub(1, std::memory_order_seq_cst);
    } else {
        Follower *fo = as_follower(c);
        flight_lock(f);
        if ((f->state.load(std::memory_order_relaxed) & kDone) ||
            (fo->flags.load(std::memory_order_relaxed) & (kCancelled | kLeft))) {
            flight_unlock(f);
            return kBadState;
        }
        // kLeft now, under the lock: a release from the done callback below
        // finds the interest already given back and gives nothing twice.
        fo->flags.fetch_or(uint8_t(kLeft), std::memory_order_relaxed);
        if (notify_cancel_locked(f, fo)) fire = fo;
        flight_unlock(f);
        if (!flight_orphaned(f)) f->group->stats().add(kCancels);
        flight_wake_waiters(f);  // its own caller may be blocked in sf_call_wait
        // The interest goes; the record keeps its reference until released.
        const int abandoned = follower_leaves(f, true) ? 1 : 0;
        if (fire) notify_run_cancelled(fire);
        return abandoned;
    }
    const int abandoned = check_abandoned(f) ? 1 : 0;
    if (fire) notify_run_cancelled(fire);
    return abandoned;
}

Status call_disown(Call *c) noexcept {
    if (!is_leader(c)) return kBadState;
    Flight *f = as_flight(c);
    if (f->mode != kModeTwoPhase) return kBadState;
    f->leader_thread.store(0, std::memory_order_relaxed);
    return kOk;
}

Status call_lead_here(Call *c) noexcept {
    if (!is_leader(c)) return kBadState;
    Flight *f = as_flight(c);
    if (f->mode != kModeTwoPhase) return kBadState;
    f->leader_thread.store(detail::thread_serial() | kStrictLead, std::memory_order_relaxed);
    return kOk;
}

int call_abandoned(Call *c) noexcept {
    return (flight_of(c)->state.load(std::memory_order_acquire) & kAbandoned) ? 1 : 0;
}

Status call_on_abandon(Call *c, AbandonCallback cb) noexcept {
    if (!is_leader(c)) return kBadState;
    Flight *f = as_flight(c);
    flight_lock(f);
    Ext *e = flight_ext(f);
    Status rc = kOk;
    if (!e) {
        rc = kNoMemory;
    } else if (e->abandon.invoke) {
        rc = kBadState;
    } else {
        e->abandon = cb;
    }
    const bool now = rc == kOk && (f->state.load(std::memory_order_relaxed) & kAbandoned);
    flight_unlock(f);
    if (now) {
        detail::NoCancel no_cancel;
        cb.invoke(cb.fn, cb.payload, f);
    }
    return rc;
}

}  // namespace sf
