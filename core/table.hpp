// The table of flights in flight: publish, join, unpublish, forget.
//
// Home slots.  An array of slot words, indexed by the key's hash.  A slot
// word holds a flight reference, the count of followers that joined it
// through the slot (a split reference count: whoever takes the flight out
// of the table folds the count into the flight), and an overflow bit:
//
//   bit 0       kOverflow: some key whose home is this slot lives in the
//               overflow table, or a thread holds the home's lock to read
//               the slot's flight; every operation that takes a flight out
//               of the slot then takes that lock
//   bits 1-6    the flight's incarnation tag (an ABA guard: a recycled block
//               published again in the same slot has another tag)
//   bits 7-47   the flight's address (flights are 128-byte aligned)
//   bits 48-63  the joiner count
//
// The uncontended call is one CAS to publish (0 -> flight) and one CAS to
// unpublish (flight with no joiner -> 0).  A follower joins with one CAS
// (+1 joiner) after comparing the flight's ident, which it reads
// speculatively (the block may be recycled meanwhile); the join pins the
// flight, and the follower checks the key again before using it.
//
// The overflow table.  A key whose home holds another key's flight goes to
// an open-addressing table of (slot word, ident) entries, one per lock
// stripe (homes share a stripe by their low bits), touched only under the
// stripe's lock.  It grows and shrinks with what it holds, moving its
// entries a few at a time with every operation (two arrays while it
// moves), so no call ever pays for rehashing a whole table, and a call
// costs the same with a thousand or a million keys in flight.  Entries are
// compared by ident before a flight is read, so a lookup reads one flight
// (the match) and a few entries.
//
// How a slot names a flight is one codec (SlotCodec below): a table in
// shared memory would store offsets instead of addresses there and nowhere
// else.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "core/flight.hpp"
#include "core/spinlock.hpp"
#include "core/types.hpp"

namespace sf {

struct SlotCodec {
    static constexpr uint64_t kOverflow = 1;
    static constexpr uint64_t kTagMask = 0x7e;
    static constexpr uint64_t kRefMask = 0x0000ffffffffff80ull;
    static constexpr int kJoinerShift = 48;
    static constexpr uint64_t kJoinerOne = uint64_t(1) << kJoinerShift;
    static constexpr uint32_t kMaxJoiners = 0xffff;

    static uint64_t encode(const Flight *f) noexcept {
        return uint64_t(reinterpret_cast<uintptr_t>(f)) | (uint64_t(f->tag & 63) << 1);
    }
    static Flight *flight(uint64_t w) noexcept {
        return reinterpret_cast<Flight *>(uintptr_t(w & kRefMask));
    }
    // The slot names this incarnation of the flight (whatever its joiners).
    static bool names(uint64_t w, uint64_t enc) noexcept {
        return (w & (kRefMask | kTagMask)) == enc;
    }
    static uint32_t joiners(uint64_t w) noexcept { return uint32_t(w >> kJoinerShift); }
};

// The 32 hash bits a flight keeps: its home slot and its ident come from them.
inline uint64_t make_ident(std::size_t key_len, uint64_t hash) noexcept {
    return (uint64_t(key_len) << 32) | uint32_t(hash);  // hash_bytes folds high into low
}

class Table {
public:
    static constexpr unsigned kMaxSlots = 1u << 20;
    static constexpr unsigned kDefaultSlots = 1024;

    // slots: 0 for the default, else rounded up to a power of two (at most
    // kMaxSlots).  It is the number of home slots; keys beyond them live in
    // the overflow tables, so it bounds nothing.
    bool init(unsigned slots) noexcept;
    void destroy() noexcept;

    // Publishes a new flight (made with flight_new(g, mode, ...)) or joins
    // the key's flight in flight.  Returns kLeader with *out the new,
    // published flight; kFollower with *out the joined flight, whose
    // reference the caller now owns (inside the slot's joiner count until
    // the flight is unpublished); kDeadlock when deadlock_check is set and
    // the key's flight is led by the calling thread (nothing joined);
    // kNoMemory.
    // fresh: a flight already made for this key (by an inline fast path
    // that lost its publishing CAS), used instead of making another.
    Status acquire(Group *g, FlightMode mode, Key key, uint64_t ident, bool deadlock_check,
                   Flight **out, Flight *fresh = nullptr) noexcept;

    // Takes f out of the table if it is still there.  Returns the joiner
    // count, whose references are already in f; the caller folds their
    // interest (flight_fold).  -1 when somebody else unpublished f (they
    // fold; wait for kUnpublished).
    int64_t unpublish(Flight *f) noexcept;
    // The same, only if nobody has joined through the slot: true when f was
    // unpublished by this call (joiners were 0).
    bool unpublish_if_unjoined(Flight *f) noexcept;

    // Whether f is still in the table.
    bool holds(Flight *f) noexcept;

    // A joiner that will not use f after all (wrong key, deadlock, a caller
    // giving up): takes one joiner off f's slot if the count is still
    // there; false when it was already folded into f (the caller then gives
    // back a reference and an interest of f itself).
    bool unjoin(Flight *f) noexcept;

    // Unpublishes the key's flight, folding its joiners; with only_unshared,
    // only a flight nobody joined.  Returns 1 when a flight was forgotten.
    int forget(Key key, uint64_t ident, bool only_unshared) noexcept;

    // A shared group's handle: every home slot holds a word no flight has
    // (the overflow bit alone), so the uncontended paths never take it and
    // the callers see the group is not local (Group::run, Group::begin).
    void poison() noexcept {
        for (uint64_t i = 0; i <= mask_; ++i)
            slots_[i].store(SlotCodec::kOverflow, std::memory_order_relaxed);
    }

    // In a forked child: every flight in the table belongs to the parent
    // (kOrphaned | kUnpublished), and the table starts empty.
    void orphan_all() noexcept;

    // The uncontended path, inline, through a key's home slot (a Home,
    // found once per call: the callers keep it, only the table reads or
    // writes what it points at).
    class Home {
        friend class Table;
        std::atomic<uint64_t> *slot_;
        explicit Home(std::atomic<uint64_t> *slot) noexcept : slot_(slot) {}
    };
    Home home_of(uint64_t ident) noexcept { return Home(&slots_[ident & mask_]); }
    // Whether the home slot is empty (a hint: the publish decides).
    static bool empty(Home h) noexcept { return h.slot_->load(std::memory_order_relaxed) == 0; }
    // Publishes a fresh flight f in its empty home slot: one CAS (release:
    // a joiner that reads the word sees the key and ident).  false when the
    // slot is not empty; then acquire() decides, with f.
    static bool publish_fresh(Home h, Flight *f) noexcept {
        uint64_t empty = 0;
        return h.slot_->compare_exchange_strong(
            empty, SlotCodec::encode(f), std::memory_order_acq_rel, std::memory_order_relaxed);
    }
    // Takes f out of the home slot if it is there alone (no joiner, no
    // overflowed key of its home, no lock holder): one CAS.  false
    // otherwise (also when f is not in this slot at all, as an overflowed
    // flight is not); then unpublish() decides.
    static bool unpublish_alone(Home h, Flight *f) noexcept {
        uint64_t expect = SlotCodec::encode(f);
        return h.slot_->compare_exchange_strong(expect, 0, std::memory_order_acq_rel,
                                                std::memory_order_relaxed);
    }

    std::atomic<uint64_t> *home(uint64_t ident) noexcept { return &slots_[ident & mask_]; }

    // Entries the overflow tables hold, and the slots they have, summed
    // over the stripes (for tests and the benchmark; takes every lock).
    struct OverflowSize {
        uint64_t entries, capacity;
    };
    OverflowSize overflow_size() noexcept;

    struct Overflow;  // one stripe's overflow table (table.cpp)

private:
    static constexpr unsigned kLocks = 64;

    // Every ident with the same home takes the same lock: the lock is a
    // function of the home index, not of the ident.
    unsigned stripe_of(uint64_t ident) const noexcept {
        return unsigned((ident & mask_) & (kLocks - 1));
    }
    Status acquire_locked(Group *g, FlightMode mode, Key key, uint64_t ident, bool deadlock_check,
                          Flight *fresh, Flight **out) noexcept;
    Status join_home_pinned(Flight *f, Flight **out) noexcept;
    void leave_joined(Flight *f) noexcept;
    void clear_overflow_if_empty(uint64_t ident) noexcept;
    bool count_overflow(uint64_t ident, int delta) noexcept;
    template <class Want>
    int64_t take_slot(Flight *f, Want want) noexcept;
    template <class Want>
    int64_t take_overflowed(Flight *f, Want want) noexcept;
    bool empty_slot(std::atomic<uint64_t> *s, uint64_t &w, uint64_t to, Flight *f) noexcept;

    std::atomic<uint64_t> *slots_ = nullptr;
    uint64_t mask_ = 0;
    // Per home: how many of its keys the overflow table holds (under the
    // home's lock); made on the first overflow.
    std::atomic<uint32_t *> overflow_counts_{nullptr};
    detail::SpinLock locks_[kLocks];
    Overflow *overflow_ = nullptr;  // kLocks of them, made with the table
};

}  // namespace sf
