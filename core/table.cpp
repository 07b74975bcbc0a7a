#include "core/table.hpp"

#include <cstring>
#include <mutex>

#include "core/alloc.hpp"
#include "core/hash.hpp"
#include "core/thread.hpp"

namespace sf {

using C = SlotCodec;

namespace {
// Rounds up to a power of two, capped at kMaxSlots (2^20): a request above
// 2^31 must not overflow the shift and loop forever.
unsigned table_size(unsigned requested) noexcept {
    if (requested == 0) return Table::kDefaultSlots;
    if (requested >= Table::kMaxSlots) return Table::kMaxSlots;
    unsigned p = 1;
    while (p < requested) p <<= 1;
    return p;
}

// The flight is led by the calling thread (its fn runs here, or it began
// this two-phase flight): a do of its key would wait for itself.
bool f_led_here(const Flight *f) noexcept { return leader_serial(f) == detail::thread_serial(); }
}  // namespace

// ---------------------------------------------------------------------------
// The overflow table of one lock stripe.  Touched only under the stripe's
// lock, so it is plain sequential code: linear probing in `cur`, with
// backward-shift deletion (no tombstones); while it grows or shrinks, the
// previous array is `old`, whose entries move into `cur` a few at a time
// with every operation (a removal there leaves a tombstone, and nothing is
// inserted there).  Entry words are slot words (flight, tag, joiners).
// ---------------------------------------------------------------------------

struct Table::Overflow {
    struct Entry {
        uint64_t word;   // 0: empty; kTombstone: removed from `old`
        uint64_t ident;  // the flight's ident: compared before the flight is read
    };
    static constexpr uint64_t kTombstone = C::kOverflow;  // never in a slot word stored here
    static constexpr uint32_t kMinCapacity = 16;
    static constexpr uint32_t kMoveStep = 4;  // old slots looked at per operation

    Entry *cur = nullptr;
    uint32_t cap = 0, live = 0;  // cap: 0 or a power of two
    Entry *old = nullptr;
    uint32_t old_cap = 0, old_live = 0, next = 0;

    static uint32_t index(uint64_t ident, uint32_t capacity) noexcept {
        // Mixed again: the idents of one stripe share their low bits (their
        // homes), which a plain mask would cluster into a few runs.
        return uint32_t(detail::fold_mul(ident, 0x9e3779b97f4a7c15ull)) & (capacity - 1);
    }

    uint32_t total() const noexcept { return live + old_live; }

    // The entry of the flight with this ident whose key is key, or null.
    // The flights read here are pinned: taking one out needs this lock.
    Entry *find(uint64_t ident, Key key) noexcept {
        Entry *e = find_in(cur, cap, ident,
                           [&](uint64_t w) { return flight_key_equals(C::flight(w), key); });
        return e ? e : find_in(old, old_cap, ident, [&](uint64_t w) {
            return flight_key_equals(C::flight(w), key);
        });
    }
    // The entry that names f, or null.
    Entry *find(const Flight *f) noexcept {
        const uint64_t ident = f->ident.load(std::memory_order_relaxed), enc = C::encode(f);
        auto same = [&](uint64_t w) { return C::names(w, enc); };
        Entry *e = find_in(cur, cap, ident, same);
        return e ? e : find_in(old, old_cap, ident, same);
    }

    template <class Match>
    static Entry *find_in(Entry *t, uint32_t capacity, uint64_t ident, Match match) noexcept {
        if (!t) return nullptr;
        for (uint32_t i = index(ident, capacity);; i = (i + 1) & (capacity - 1)) {
            Entry *e = &t[i];
            if (e->word == 0) return nullptr;
            if (e->word != kTombstone && e->ident == ident && match(e->word)) return e;
        }
    }

    static void put(Entry *t, uint32_t capacity, uint64_t word, uint64_t ident) noexcept {
        uint32_t i = index(ident, capacity);
        while (t[i].word != 0) i = (i + 1) & (capacity - 1);
        t[i] = Entry{word, ident};
    }

    // Room for one more entry: false when none could be had.  Grows to
    // keep the load at most 3/4, after moving whatever is left in `old`
    // (rare: the moves outpace the inserts that make a growth necessary).
    bool make_room() noexcept {
        if (cur && (total() + 1) * 4 <= cap * 3) return true;
        if (cur && old) finish_move();
        const uint32_t want = cur ? cap * 2 : kMinCapacity;
        if (!resize(want)) return cur && total() + 1 < cap;  // full load, not full
        return true;
    }

    // Starts moving into a new array of `capacity` slots.  false when out of
    // memory (nothing changed).  Caller has no move in progress.
    bool resize(uint32_t capacity) noexcept {
        auto *fresh = static_cast<Entry *>(detail::alloc(sizeof(Entry) * capacity));
        if (!fresh) return false;
        std::memset(fresh, 0, sizeof(Entry) * capacity);
        old = cur;
        old_cap = cap;
        old_live = live;
        next = 0;
        cur = fresh;
        cap = capacity;
        live = 0;
        if (!old) old_cap = old_live = 0;
        return true;
    }

    void insert(uint64_t word, uint64_t ident) noexcept {
        put(cur, cap, word, ident);
        ++live;
    }

    void remove(Entry *e) noexcept {
        if (old && e >= old && e < old + old_cap) {
            e->word = kTombstone;
            --old_live;
            return;
        }
        // Backward shift: pull later entries of the run into the hole when
        // their home is not between the hole and where they sit.
        const uint32_t m = cap - 1;
        uint32_t hole = uint32_t(e - cur);
        for (uint32_t j = (hole + 1) & m; cur[j].word != 0; j = (j + 1) & m) {
            const uint32_t home = index(cur[j].ident, cap);
            const bool stays = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
            if (!stays) {
                cur[hole] = cur[j];
                hole = j;
            }
        }
        cur[hole] = Entry{0, 0};
        --live;
    }

    // Moves a few of `old`'s slots; frees it when it is empty.  Then, when
    // far too big for what it holds, starts shrinking (at most to the
    // smallest size, which it keeps: a stripe that overflowed once is
    // likely to again, and it costs 256 bytes).
    void step() noexcept {
        if (old) {
            for (uint32_t n = 0; n < kMoveStep && next < old_cap; ++n, ++next) move(next);
            if (next == old_cap || old_live == 0) drop_old();
            return;
        }
        if (cap > kMinCapacity && live * 8 < cap) {
            uint32_t want = cap / 4;
            if (want < kMinCapacity) want = kMinCapacity;
            resize(want);  // out of memory: stay big
        }
    }

    void move(uint32_t i) noexcept {
        Entry &e = old[i];
        if (e.word != 0 && e.word != kTombstone) {
            put(cur, cap, e.word, e.ident);
            ++live;
            --old_live;
            // A tombstone, not a hole: a later entry of the same run must
            // still be found by probing past it.
            e.word = kTombstone;
        }
    }

    void finish_move() noexcept {
        while (next < old_cap) move(next++);
        drop_old();
    }

    void drop_old() noexcept {
        // Whatever `next` did not reach is empty or a tombstone.
        detail::dealloc(old);
        old = nullptr;
        old_cap = old_live = next = 0;
    }

    template <class Fn>
    void for_each(Fn fn) noexcept {
        for (Entry *t : {cur, old}) {
            const uint32_t n = t == cur ? cap : old_cap;
            for (uint32_t i = 0; t && i < n; ++i)
                if (t[i].word != 0 && t[i].word != kTombstone) fn(t[i]);
        }
    }

    void clear() noexcept {
        if (cur) std::memset(cur, 0, sizeof(Entry) * cap);
        live = 0;
        if (old) drop_old();
    }

    void free() noexcept {
        detail::dealloc(cur);
        detail::dealloc(old);
        cur = old = nullptr;
        cap = live = old_cap = old_live = next = 0;
    }
};

bool Table::init(unsigned slots) noexcept {
    const unsigned n = table_size(slots);
    void *mem = detail::alloc_aligned(sizeof(std::atomic<uint64_t>) * n, 64);
    if (!mem) return false;
    overflow_ = static_cast<Overflow *>(detail::alloc(sizeof(Overflow) * kLocks));
    if (!overflow_) {
        detail::dealloc(mem);
        return false;
    }
    for (unsigned i = 0; i < kLocks; ++i) new (&overflow_[i]) Overflow();
    slots_ = static_cast<std::atomic<uint64_t> *>(mem);
    for (unsigned i = 0; i < n; ++i) new (&slots_[i]) std::atomic<uint64_t>(0);
    mask_ = n - 1;
    return true;
}

void Table::destroy() noexcept {
    if (overflow_) {
        for (unsigned i = 0; i < kLocks; ++i) overflow_[i].free();
        detail::dealloc(overflow_);
    }
    detail::dealloc(slots_);
    detail::dealloc(overflow_counts_.load(std::memory_order_acquire));
    slots_ = nullptr;
    overflow_ = nullptr;
}

// Caller holds the home's lock.  Counts a key of this home into (+1) or out
// of (-1) the overflow table; false when the counts could not be made.
bool Table::count_overflow(uint64_t ident, int delta) noexcept {
    uint32_t *counts = overflow_counts_.load(std::memory_order_acquire);
    if (!counts) {
        counts = static_cast<uint32_t *>(detail::alloc(sizeof(uint32_t) * (mask_ + 1)));
        if (!counts) return false;
        std::memset(counts, 0, sizeof(uint32_t) * (mask_ + 1));
        uint32_t *none = nullptr;
        if (!overflow_counts_.compare_exchange_strong(none, counts, std::memory_order_acq_rel)) {
            detail::dealloc(counts);  // another stripe's lock holder made them
            counts = none;
        }
    }
    counts[ident & mask_] += uint32_t(delta);
    return true;
}

// Caller holds the home's lock.  Without overflowed keys, the fast paths may
// serve the home again.
void Table::clear_overflow_if_empty(uint64_t ident) noexcept {
    uint32_t *counts = overflow_counts_.load(std::memory_order_acquire);
    if (counts && counts[ident & mask_]) return;
    home(ident)->fetch_and(~C::kOverflow, std::memory_order_acq_rel);
}

Table::OverflowSize Table::overflow_size() noexcept {
    OverflowSize size{0, 0};
    for (unsigned i = 0; i < kLocks; ++i) {
        std::lock_guard<detail::SpinLock> lock(locks_[i]);
        size.entries += overflow_[i].total();
        size.capacity += overflow_[i].cap + overflow_[i].old_cap;
    }
    return size;
}

// ---------------------------------------------------------------------------
// acquire: publish or join
//
// Pinning.  A flight found in a slot may complete and be recycled at any
// moment, so its key can be read only once it is pinned: by a join (the
// leader cannot fold and free it while a joiner's reference sits in the
// slot), or by holding the home's lock while the slot's overflow bit is set
// (every unpublish of such a slot, and of any overflowed flight, takes that
// lock).  The fast path joins, then checks the key; the locked path checks
// the key, then joins, so it never joins the wrong flight.
// ---------------------------------------------------------------------------

Status Table::acquire(Group *g, FlightMode mode, Key key, uint64_t ident, bool deadlock_check,
                      Flight **out, Flight *fresh) noexcept {
    std::atomic<uint64_t> *s = home(ident);
    uint64_t w = s->load(std::memory_order_acquire);
    for (;;) {
        if (w == 0) {
            if (!fresh) {
                fresh = flight_new(g, mode, key, ident);
                if (!fresh) return kNoMemory;
            }
            // Release: a joiner that reads this word sees the key and ident.
            if (s->compare_exchange_weak(w, C::encode(fresh), std::memory_order_acq_rel,
                                         std::memory_order_acquire)) {
                *out = fresh;
                return kLeader;
            }
            continue;
        }
        if (w & C::kOverflow) break;
        Flight *f = C::flight(w);
        // Speculative: f may have been recycled since w was read.  The CAS
        // below fails unless the slot still names this incarnation.
        if (f->ident.load(std::memory_order_relaxed) != ident) break;  // another key
        if (C::joiners(w) == C::kMaxJoiners) break;
        if (deadlock_check && f_led_here(f)) break;  // probably our own: decide under the lock
        if (s->compare_exchange_weak(w, w + C::kJoinerOne, std::memory_order_acq_rel,
                                     std::memory_order_acquire)) {
            if (flight_key_equals(f, key)) {
                if (fresh) flight_discard(fresh);
                *out = f;
                return kFollower;
            }
            // The same ident for another key (a 32-bit hash collision of
            // two keys of one length): undo, and let the lock sort it out.
            leave_joined(f);
            break;
        }
    }
    return acquire_locked(g, mode, key, ident, deadlock_check, fresh, out);
}

void Table::leave_joined(Flight *f) noexcept {
    if (!unjoin(f)) {
        // Folded meanwhile: give back what the fold gave us.
        f->interest.fetch_sub(1, std::memory_order_seq_cst);
        flight_release(f);
    }
}

// A full joiner count: join the flight itself, as if folded.  It is pinned
// (the caller holds the lock), so it cannot complete meanwhile.
namespace {
void join_directly(Flight *f) noexcept {
    f->refs.fetch_add(1, std::memory_order_relaxed);
    f->interest.fetch_add(1, std::memory_order_seq_cst);
    f->state.fetch_or(kShared, std::memory_order_release);
}
}  // namespace

// Joins the pinned flight f through its home slot: kFollower (*out = f), or
// kInvalid when f left the slot meanwhile.
Status Table::join_home_pinned(Flight *f, Flight **out) noexcept {
    std::atomic<uint64_t> *slot = home(f->ident.load(std::memory_order_relaxed));
    const uint64_t enc = C::encode(f);
    uint64_t w = slot->load(std::memory_order_acquire);
    while (C::names(w, enc)) {
        if (C::joiners(w) == C::kMaxJoiners) {
            join_directly(f);
            *out = f;
            return kFollower;
        }
        if (slot->compare_exchange_weak(w, w + C::kJoinerOne, std::memory_order_acq_rel,
                                        std::memory_order_acquire)) {
            *out = f;
            return kFollower;
        }
    }
    return kInvalid;
}

// The rare path, under the home's lock, with the home's overflow bit set so
// that every flight looked at here stays pinned: the home holds another
// key's flight, the home has overflowed keys, the joiner count is full, the
// leader may be this thread, or two keys share an ident.
Status Table::acquire_locked(Group *g, FlightMode mode, Key key, uint64_t ident,
                             bool deadlock_check, Flight *fresh, Flight **out) noexcept {
    std::atomic<uint64_t> *s = home(ident);
    std::lock_guard<detail::SpinLock> lock(locks_[stripe_of(ident)]);
    Overflow &ov = overflow_[stripe_of(ident)];
    ov.step();
    uint64_t w = s->fetch_or(C::kOverflow, std::memory_order_acq_rel) | C::kOverflow;
    Status rc = kInvalid;

    // The key's flight, in the home slot or in the overflow table.
    Flight *home_flight = C::flight(w);
    Overflow::Entry *entry = nullptr;
    Flight *found = nullptr;
    if (home_flight && home_flight->ident.load(std::memory_order_relaxed) == ident &&
        flight_key_equals(home_flight, key)) {
        found = home_flight;
    } else if ((entry = ov.find(ident, key)) != nullptr) {
        found = C::flight(entry->word);
    }
    if (found) {
        if (deadlock_check && f_led_here(found)) {
            rc = kDeadlock;
        } else if (entry) {
            // Nobody touches an entry without this lock: no CAS needed.
            if (C::joiners(entry->word) == C::kMaxJoiners) {
                join_directly(found);
            } else {
                entry->word += C::kJoinerOne;
            }
            *out = found;
            rc = kFollower;
        } else {
            rc = join_home_pinned(found, out);  // kInvalid: it just left
        }
    }

    // Not in flight: publish in the home slot if it is free, else in the
    // overflow table.
    if (rc == kInvalid) {
        if (!fresh) fresh = flight_new(g, mode, key, ident);
        if (!fresh) rc = kNoMemory;
    }
    if (rc == kInvalid) {
        w = s->load(std::memory_order_acquire);
        while (!C::flight(w)) {
            if (s->compare_exchange_weak(w, w | C::encode(fresh), std::memory_order_acq_rel,
                                         std::memory_order_acquire)) {
                rc = kLeader;
                break;
            }
        }
        if (rc != kLeader) {
            if (!ov.make_room() || !count_overflow(ident, +1)) {
                rc = kNoMemory;
            } else {
                fresh->flags = uint8_t(fresh->flags | kInOverflow);
                ov.insert(C::encode(fresh), ident);
                rc = kLeader;
            }
        }
        if (rc == kLeader) {
            *out = fresh;
            fresh = nullptr;
        }
    }
    if (fresh) flight_discard(fresh);
    clear_overflow_if_empty(ident);
    return rc;
}

// ---------------------------------------------------------------------------
// leaving the table
// ---------------------------------------------------------------------------

// One CAS from w (naming f with its joiners) to `to`.  The joiners'
// references are added to f before the CAS and taken back if it fails: a
// joiner that finds its count gone from the slot (and so gives back a
// reference of f's own) must find it already in f, or f could be freed
// under the leader.  w is updated on failure, as by compare_exchange.
bool Table::empty_slot(std::atomic<uint64_t> *s, uint64_t &w, uint64_t to, Flight *f) noexcept {
    const uint32_t joiners = C::joiners(w);
    if (joiners) f->refs.fetch_add(joiners, std::memory_order_seq_cst);
    if (s->compare_exchange_weak(w, to, std::memory_order_seq_cst, std::memory_order_seq_cst))
        return true;
    // The leader (or, for a forget, the running leader) still holds its own
    // reference: taking these back cannot free f.
    if (joiners) f->refs.fetch_sub(joiners, std::memory_order_relaxed);
    return false;
}

// An overflowed flight's entry out of its table when want(joiners) agrees:
// the joiner count, whose references are now f's; -1 when it is not there;
// -2 when want refused.
template <class Want>
int64_t Table::take_overflowed(Flight *f, Want want) noexcept {
    const uint64_t ident = f->ident.load(std::memory_order_relaxed);
    std::lock_guard<detail::SpinLock> lock(locks_[stripe_of(ident)]);
    Overflow &ov = overflow_[stripe_of(ident)];
    ov.step();
    Overflow::Entry *e = ov.find(f);
    if (!e) return -1;
    const uint32_t joiners = C::joiners(e->word);
    if (!want(joiners)) return -2;
    if (joiners) f->refs.fetch_add(joiners, std::memory_order_seq_cst);
    ov.remove(e);
    count_overflow(ident, -1);  // the counts exist: f was counted in
    clear_overflow_if_empty(ident);
    return joiners;
}

// Takes f's slot word from a state naming f to empty (keeping the home's
// overflow bit) when want(joiners) agrees.  -1: the slot no longer names f;
// -2: want refused.  An overflowing home is changed under its lock (the
// pinning rule above).
template <class Want>
int64_t Table::take_slot(Flight *f, Want want) noexcept {
    if (f->flags & kInOverflow) return take_overflowed(f, want);
    const uint64_t enc = C::encode(f);
    const uint64_t ident = f->ident.load(std::memory_order_relaxed);
    std::atomic<uint64_t> *s = home(ident);
    uint64_t w = s->load(std::memory_order_seq_cst);
    while (!(w & C::kOverflow)) {
        if (!C::names(w, enc)) return -1;
        if (!want(C::joiners(w))) return -2;
        if (empty_slot(s, w, 0, f)) return C::joiners(w);
    }
    std::lock_guard<detail::SpinLock> lock(locks_[stripe_of(ident)]);
    w = s->load(std::memory_order_seq_cst);
    for (;;) {
        if (!C::names(w, enc)) return -1;
        if (!want(C::joiners(w))) return -2;
        if (empty_slot(s, w, w & C::kOverflow, f)) break;
    }
    return C::joiners(w);
}

int64_t Table::unpublish(Flight *f) noexcept {
    return take_slot(f, [](uint32_t) { return true; });
}

bool Table::unpublish_if_unjoined(Flight *f) noexcept {
    return take_slot(f, [](uint32_t joiners) { return joiners == 0; }) == 0;
}

bool Table::holds(Flight *f) noexcept {
    const uint64_t ident = f->ident.load(std::memory_order_relaxed);
    if (f->flags & kInOverflow) {
        std::lock_guard<detail::SpinLock> lock(locks_[stripe_of(ident)]);
        return overflow_[stripe_of(ident)].find(f) != nullptr;
    }
    return C::names(home(ident)->load(std::memory_order_seq_cst), C::encode(f));
}

bool Table::unjoin(Flight *f) noexcept {
    const uint64_t ident = f->ident.load(std::memory_order_relaxed);
    if (f->flags & kInOverflow) {
        std::lock_guard<detail::SpinLock> lock(locks_[stripe_of(ident)]);
        Overflow::Entry *e = overflow_[stripe_of(ident)].find(f);
        if (!e || C::joiners(e->word) == 0) return false;
        e->word -= C::kJoinerOne;
        return true;
    }
    std::atomic<uint64_t> *s = home(ident);
    const uint64_t enc = C::encode(f);
    uint64_t w = s->load(std::memory_order_acquire);
    while (C::names(w, enc) && C::joiners(w) > 0) {
        if (s->compare_exchange_weak(w, w - C::kJoinerOne, std::memory_order_seq_cst,
                                     std::memory_order_acquire))
            return true;
    }
    return false;
}

int Table::forget(Key key, uint64_t ident, bool only_unshared) noexcept {
    std::atomic<uint64_t> *h = home(ident);
    std::lock_guard<detail::SpinLock> lock(locks_[stripe_of(ident)]);
    Overflow &ov = overflow_[stripe_of(ident)];
    ov.step();
    // Pin whatever the home holds (see acquire), then look.
    uint64_t w = h->fetch_or(C::kOverflow, std::memory_order_acq_rel) | C::kOverflow;
    int rc = 0;
    auto unshared = [&](Flight *f, uint32_t joiners) {
        return joiners == 0 && !(f->state.load(std::memory_order_acquire) & kShared);
    };
    Flight *f = C::flight(w);
    if (f && f->ident.load(std::memory_order_relaxed) == ident && flight_key_equals(f, key)) {
        const uint64_t enc = C::encode(f);
        while (C::names(w, enc)) {
            const uint32_t joiners = C::joiners(w);
            if (only_unshared && !unshared(f, joiners)) break;
            if (empty_slot(h, w, w & C::kOverflow, f)) {
                flight_fold(f, joiners, true);
                rc = 1;
                break;
            }
        }
    } else if (Overflow::Entry *e = ov.find(ident, key)) {
        f = C::flight(e->word);
        const uint32_t joiners = C::joiners(e->word);
        if (!only_unshared || unshared(f, joiners)) {
            if (joiners) f->refs.fetch_add(joiners, std::memory_order_seq_cst);
            ov.remove(e);
            count_overflow(ident, -1);
            flight_fold(f, joiners, true);
            rc = 1;
        }
    }
    clear_overflow_if_empty(ident);
    return rc;
}

namespace {
// The joiners' references go into the flight, as a fold would put them:
// a handle from before the fork that is released in the child then gives
// back a reference the flight counts.  (The parent's leader never
// completes here, so such a flight is never freed: a forked child's leak.)
void orphan(Flight *f, uint64_t w) noexcept {
    f->refs.fetch_add(C::joiners(w), std::memory_order_relaxed);
    f->state.fetch_or(kOrphaned | kUnpublished, std::memory_order_relaxed);
}
}  // namespace

void Table::orphan_all() noexcept {
    for (uint64_t i = 0; i <= mask_; ++i) {
        const uint64_t w = slots_[i].load(std::memory_order_relaxed);
        if (Flight *f = C::flight(w)) orphan(f, w);
        slots_[i].store(0, std::memory_order_relaxed);
    }
    for (unsigned i = 0; i < kLocks; ++i) {
        overflow_[i].for_each([](Overflow::Entry &e) { orphan(C::flight(e.word), e.word); });
        overflow_[i].clear();
        locks_[i].reset();
    }
    if (uint32_t *counts = overflow_counts_.load(std::memory_order_relaxed))
        std::memset(counts, 0, sizeof(uint32_t) * (mask_ + 1));
}

}  // namespace sf
