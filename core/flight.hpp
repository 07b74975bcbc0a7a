// A flight is one execution of fn for one key.  The same 128-byte block is
// also the shared, reference-counted result every caller receives, and the
// leader's call handle: one object from start to last release.  Followers
// of the two-phase form get a small handle of their own (Follower).
//
// Life of a flight (core/table.hpp has the table's side):
//   start    the leader takes a block, fills in the key, publishes it in the
//            table with one CAS.
//   join     followers add one to the joiner count in the table's slot word
//            (a split reference count: each joiner owns a reference that the
//            flight's own count does not show yet).
//   unpublish  the flight leaves the table (completion, forget, abandonment,
//            a fork): whoever removes it folds the joiner count into refs
//            and interest and sets kUnpublished.  Only then is anyone woken.
//   complete the leader stores the outcome and sets kDone (a plain store
//            when nobody ever joined).
//   release  the last reference destroys the value and recycles the block.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "core/cache.hpp"
#include "core/platform.hpp"
#include "core/thread.hpp"
#include "core/types.hpp"

namespace sf {

class Group;
struct Ext;
struct Follower;

// Keys up to this many bytes live inside the flight: no allocation per call.
constexpr std::size_t kInlineKey = 48;

// What an sf_call handle points at starts with one of these bytes.
enum CallRole : uint8_t { kRoleLeader = 1, kRoleFollower = 2, kRoleAsyncLeader = 3 };

// How the flight's fn runs.  Fixed when the flight starts.
enum FlightMode : uint8_t {
    kModeDo = 0,        // sf_group_do: fn on the leader's thread
    kModeTwoPhase = 1,  // sf_group_begin: the caller produces the result
    kModeAsync = 2,     // sf_group_do_async: fn on the executor
};

// Flight::flags: written before the flight is published, read by anyone
// who found it.
enum FlightFlag : uint8_t {
    kInOverflow = 1,  // published in the overflow table, not in its home slot
};

// Flight::lflags: the leader's own, written only by whoever holds the right
// to complete (fn's thread, or the two-phase claimant), read by it and by
// the last release.
enum LeaderFlag : uint8_t {
    kUncounted = 1,     // a refused do_async: counted in no stat
    kPanicPending = 2,  // sf_call_panic inside fn: panic when fn returns
    kMessageOwned = 4,  // ext->message is a heap copy
    kMessageLost = 8,   // a pending panic's message could not be kept
};

// Flight::state bits.  The word is also the futex followers park on.
enum StateBit : uint32_t {
    kDone = 1u << 0,         // outcome published (release); never cleared
    kWaiters = 1u << 1,      // a thread is (about to be) parked on the futex
    kNotify = 1u << 2,       // a call is linked for a callback or an eventfd
    kLocked = 1u << 3,       // the flight's lock (notify list, ext)
    kUnpublished = 1u << 4,  // left the table; joiners folded into refs
    kShared = 1u << 5,       // a joiner was folded before completion
    kWriting = 1u << 6,      // a two-phase set_value is storing the value
    kFinished = 1u << 7,     // the leader claimed completion: no more writes
    kAbandoned = 1u << 8,    // every interested party left while fn ran
    kOrphaned = 1u << 9,     // made before a fork, in the child: touches no group
    kLeaderLeft = 1u << 10,  // the two-phase leader's caller gave up (SF_1.1)
    // Bits 16-31 count the cancels of waiting callers (modulo 2^16): a
    // cancel changes the word a waiter sleeps on, so the waiter's futex
    // wait either sees the change or is woken by the cancel's wake; either
    // way it looks at its own call again (flight_wait).  Every other update
    // of the word is a bit operation or a CAS, which carry the count along.
    kCancelGenOne = 1u << 16,
};

struct alignas(128) Flight {
    // ---- line 0: everything an uncontended call writes and reads
    uint8_t role;    // kRoleLeader: an sf_call may point here
    uint8_t mode;    // FlightMode
    uint8_t tag;     // incarnation tag, part of the slot word (ABA guard);
                     // kept across recycling
    uint8_t flags;   // FlightFlag
    int8_t status_;  // Status, valid once kDone is seen (acquire)
    uint8_t lflags;  // LeaderFlag
    uint16_t epoch;  // detail::fork_generation() (low bits) when the flight started
    // (key length << 32) | 32 hash bits: what a thread that found this
    // flight in a slot compares before joining.  Relaxed atomic: the block
    // may be recycled under the reader, who checks again after joining.
    std::atomic<uint64_t> ident;
    std::atomic<uint32_t> state;  // StateBit
    std::atomic<uint32_t> refs;   // the leader's handle, results, folded joiners
    Group *group;
    void *value;
    DestroyFn destroy;
    int error;
    std::atomic<int32_t> interest;  // parties still interested (leader + folded joiners)
    Follower *notify_head;          // calls to notify; under the flight's lock

    // ---- line 1: the key, the leader's identity, rare fields
    union {
        unsigned char inline_key[kInlineKey];
        unsigned char *heap_key;  // keys longer than kInlineKey
    };
    // thread_serial() of the thread that leads: the one running fn (a
    // do_async task: 0 until it starts), or the one that began a two-phase
    // flight (0 once disowned).  sf_group_do of the key on that thread is a
    // deadlock; a follower waiting forever on it is one when fn runs there,
    // and for a two-phase flight only with kStrictLead (sf_call_lead_here):
    // the leader's handle may have been handed to another thread (1.0).
    std::atomic<uint64_t> leader_thread;
    std::atomic<Ext *> ext;  // nullptr until a rare field is needed

    std::size_t key_len() const noexcept {
        return std::size_t(ident.load(std::memory_order_relaxed) >> 32);
    }
    const unsigned char *key() const noexcept {
        return key_len() > kInlineKey ? heap_key : inline_key;
    }
    bool done() const noexcept { return state.load(std::memory_order_acquire) & kDone; }
    Status status() const noexcept { return Status(status_); }
};
static_assert(sizeof(Flight) == 128, "two cache lines, the hot one first");
static_assert(offsetof(Flight, inline_key) == 64, "line 0 holds everything but the key");

// leader_thread's top bit: a two-phase flight whose caller said its work
// runs on the leading thread (sf_call_lead_here).  Serials never get there.
constexpr uint64_t kStrictLead = uint64_t(1) << 63;
inline uint64_t leader_serial(const Flight *f) noexcept {
    return f->leader_thread.load(std::memory_order_relaxed) & ~kStrictLead;
}

// Rare fields, in a 64-byte block of their own, allocated the first time one
// is needed (a panic message, an abandon callback, the leader's own
// registration) and recycled with the flight.
struct alignas(64) Ext {
    const char *message;      // the panic message (kMessageOwned: a heap copy)
    Follower *leader_reg;     // the leader handle's on_done/fd registration
    AbandonCallback abandon;  // SF_1.1: runs once when abandoned
};
static_assert(sizeof(Ext) == 64, "one cache line");

// Follower::flags
enum FollowerFlag : uint8_t {
    kLinked = 1,     // on the flight's notify list (holds a reference)
    kCounted = 2,    // counted as an open handle in the stats
    kDoneSet = 4,    // a done callback is registered
    kCancelled = 8,  // the caller gave up (SF_1.1)
    kLeft = 16,      // its interest was given back
    kNoRef = 32,     // its flight reference was given back with its interest
};

// A follower's handle (sf_group_begin), a do_async follower's pending
// notification, or the leader's own registration on its two-phase flight.
struct alignas(64) Follower {
    uint8_t role;  // kRoleFollower, or kRoleAsyncLeader for a do_async task
    uint8_t mode;  // the flight's mode
    // FollowerFlag.  Atomic (relaxed): the owner and a completing thread
    // both touch it; what must agree is decided under the flight's lock.
    std::atomic<uint8_t> flags;
    uint8_t firing;              // written by completion only: deliver this one's done
    std::atomic<uint32_t> refs;  // the owner + a pending notification
    Flight *flight;
    Follower *next, *prev;  // the flight's notify list
    DoneCallback done;
    int efd;            // sf_call_fd's eventfd, or -1
    uint32_t epoch;     // detail::fork_generation() when counted as a handle
    WorkCallback work;  // kRoleAsyncLeader: the fn to run
};
static_assert(sizeof(Follower) == 128, "two cache lines");

// The epoch flights and handles record: the process's fork generation (low
// bits), so the child of a fork can tell its parent's objects.
uint16_t current_epoch() noexcept;

// ---------------------------------------------------------------------------
// Lifecycle (core/flight.cpp)
// ---------------------------------------------------------------------------

// A fresh block for a flight of group g, with the key copied in and one
// reference (the leader's).  nullptr when out of memory.  Inline: it is
// half of an uncontended call's work.
Flight *flight_new(Group *g, FlightMode mode, Key key, uint64_t ident) noexcept;
// Gives back a flight that was never published (the caller joined another).
void flight_discard(Flight *f) noexcept;

inline void flight_retain(Flight *f) noexcept { f->refs.fetch_add(1, std::memory_order_relaxed); }
// Drops a reference; the last one destroys the value (with cancellation
// disabled) and recycles the block.
void flight_release(Flight *f) noexcept;

// The key bytes equal key (after joining, when the flight cannot change).
bool flight_key_equals(const Flight *f, Key key) noexcept;

// The flight's rare fields, created on first use.  nullptr when out of
// memory.  Caller holds the flight's lock, or is the only one who can see f.
Ext *flight_ext(Flight *f) noexcept;

// The flight's lock (a bit of state): guards the notify list and ext.
void flight_lock(Flight *f) noexcept;
void flight_unlock(Flight *f) noexcept;

// destroy(value) with cancellation disabled, exceptions contained.
void run_destroy(DestroyFn destroy, void *value) noexcept;

// A value as bytes (sf_call_set_bytes): a copy of data in a block of the
// library's own, its length stored just before the bytes.  Small values
// take a block from the per-thread caches (up to 56 bytes in a 64-byte
// block, up to 120 in a 128-byte one), so a steady state of small values
// allocates nothing; larger ones come from the heap.  *destroy receives
// the function that gives the block back, the only way a value is known to
// be bytes.  nullptr when out of memory.
void *bytes_copy(const void *data, std::size_t len, DestroyFn *destroy) noexcept;
// The bytes of a value stored by bytes_copy (its destroy function says so),
// or nullptr with *len 0 for any other value.
const void *bytes_of(void *value, DestroyFn destroy, std::size_t *len) noexcept;

// Folds joiners taken out of the slot into the flight: their interest, and
// kShared when there were any (their references went in with the CAS that
// took them out: Table::empty_slot).  unpublished: the folder is not the
// leader, which waits for kUnpublished before it completes.
void flight_fold(Flight *f, uint32_t joiners, bool unpublished) noexcept;

// The message sf_result_panic_message returns for a panicked flight.
const char *flight_panic_message(const Flight *f) noexcept;

// Waits until f is done, the deadline passes (< 0: forever) or, when
// cancel_flags is given, kCancelled appears there (a follower's own record:
// its caller gave up, flight_wake_waiters woke us).  Spins briefly, then
// parks on the state word.
enum WaitEnd { kWaitDone, kWaitTimedOut, kWaitCancelled };
WaitEnd flight_wait(Flight *f, int64_t timeout_ns,
                    const std::atomic<uint8_t> *cancel_flags = nullptr) noexcept;

// Wakes f's parked waiters so that each looks at its own call again: after
// a caller gave up (its record's kCancelled is set, seq_cst).  Changes the
// word they sleep on (kCancelGenOne), so none can miss it.
void flight_wake_waiters(Flight *f) noexcept;

// Made before a fork and used in the child: the parent's threads, and
// perhaps the group, are gone there, so such a flight touches no group.
inline bool flight_orphaned(const Flight *f) noexcept;

// Someone else took f out of the table (forget, abandonment, a fork):
// waits until their fold is visible, that is until one of `bits`
// (kUnpublished at least) is set; returns the state seen.  They are
// between two instructions.
uint32_t flight_wait_unpublished(Flight *f, uint32_t bits = kUnpublished) noexcept;

// Two-phase leaders: the right to write the value and to complete are one
// state word's kWriting and kFinished bits, so a set_value on one thread
// and a finish on another never interleave.  Sets `bit` once no value is
// being stored; false when the flight is already finished.
bool flight_take_leader_bit(Flight *f, uint32_t bit) noexcept;

// A heap copy of msg, or nullptr when out of memory.
char *copy_message(const char *msg) noexcept;
extern const char kPanicMessageLost[];
extern const char kPanicDefault[];

// ---------------------------------------------------------------------------
// The uncontended path, inline
// ---------------------------------------------------------------------------

namespace detail {
// Copies a key of at most kInlineKey bytes without a call into libc: the
// length is small and known to be bounded, so a few overlapping moves do.
SF_HOT void copy_small(unsigned char *dst, const unsigned char *src, std::size_t n) noexcept {
    if (n >= 16) {
        std::size_t i = 0;
        for (; i + 16 <= n; i += 16) __builtin_memcpy(dst + i, src + i, 16);
        if (i < n) __builtin_memcpy(dst + n - 16, src + n - 16, 16);
    } else if (n >= 8) {
        __builtin_memcpy(dst, src, 8);
        __builtin_memcpy(dst + n - 8, src + n - 8, 8);
    } else if (n >= 4) {
        __builtin_memcpy(dst, src, 4);
        __builtin_memcpy(dst + n - 4, src + n - 4, 4);
    } else if (n > 0) {
        dst[0] = src[0];
        dst[n / 2] = src[n / 2];
        dst[n - 1] = src[n - 1];
    }
}
}  // namespace detail

bool flight_copy_heap_key(Flight *f, Key key) noexcept;  // false: out of memory
void flight_free_rare(Flight *f) noexcept;               // ext, heap key

inline uint16_t current_epoch() noexcept { return uint16_t(detail::fork_generation()); }

inline bool flight_orphaned(const Flight *f) noexcept {
    return f->epoch != current_epoch() || (f->state.load(std::memory_order_relaxed) & kOrphaned);
}

SF_HOT Flight *flight_new(Group *g, FlightMode mode, Key key, uint64_t ident) noexcept {
    auto *f = static_cast<Flight *>(detail::flight_cache().get());
    if (!f) return nullptr;
    if (__builtin_expect(key.size > kInlineKey, 0)) {
        if (!flight_copy_heap_key(f, key)) {
            detail::flight_cache().put(f);
            return nullptr;
        }
    } else {
        detail::copy_small(f->inline_key, static_cast<const unsigned char *>(key.data), key.size);
    }
    // Only the fields that change.  The first eight bytes in one store:
    // role, mode, the incarnation tag (bumped, never reset: a fresh block
    // starts from zero), no flags, status 0, the fork epoch.  notify_head
    // and ext are null in every block the cache hands out (fresh blocks
    // are zeroed; the last release resets them).
    const uint64_t header = uint64_t(kRoleLeader) | uint64_t(mode) << 8 |
                            uint64_t(uint8_t(f->tag + 1)) << 16 | uint64_t(current_epoch()) << 48;
    static_assert(offsetof(Flight, epoch) == 6 && offsetof(Flight, tag) == 2, "header layout");
    __builtin_memcpy(&f->role, &header, sizeof header);
    f->ident.store(ident, std::memory_order_relaxed);
    f->state.store(0, std::memory_order_relaxed);
    f->refs.store(1, std::memory_order_relaxed);
    f->group = g;
    f->value = nullptr;
    f->destroy = nullptr;
    // Interest only decides abandonment, and only two-phase flights can be
    // abandoned; folds add to it in every mode, harmlessly.
    if (mode == kModeTwoPhase) f->interest.store(1, std::memory_order_relaxed);
    // A thread that got a block is registered, so it has its serial.
    f->leader_thread.store(mode == kModeAsync ? 0 : detail::t_state.serial,
                           std::memory_order_relaxed);
    return f;
}

// The last reference's work when there is more than recycling the block:
// a value to destroy, an ext, a heap key.
void flight_free_slow(Flight *f) noexcept;

SF_HOT void flight_release(Flight *f) noexcept {
    // Sole owner (the common uncontended case): nobody can take a new
    // reference without holding one, so no atomic decrement is needed.
    if (f->refs.load(std::memory_order_acquire) != 1 &&
        f->refs.fetch_sub(1, std::memory_order_acq_rel) != 1)
        return;
#if defined(SF_ASAN) || !defined(NDEBUG)
    // The leader holds a reference until its flight completes: a flight
    // freed before that is a reference counted twice somewhere.
    if (!(f->state.load(std::memory_order_relaxed) & kDone)) __builtin_trap();
#endif
    if (__builtin_expect(f->destroy != nullptr ||
                             f->ext.load(std::memory_order_relaxed) != nullptr ||
                             f->key_len() > kInlineKey,
                         0))
        return flight_free_slow(f);
    detail::flight_cache().put(f);
}

}  // namespace sf
