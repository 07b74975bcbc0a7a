#include "core/table.hpp"

#include <cstring>
#include <mutex>

#include "core/alloc.hpp"
#include "core/thread.hpp"

namespace sf {

using C = SlotCodec;

namespace {
unsigned round_up_pow2(unsigned n) noexcept {
    unsigned p = 1;
    while (p < n) p <<= 1;
    return p;
}

// The flight is led by the calling thread (its fn runs here, or it began
// this two-phase flight): waiting would be waiting for oneself.
bool f_led_here(const Flight *f) noexcept {
    return leader_serial(f) == detail::thread_serial();
}
}  // namespace

bool Table::init(unsigned slots) noexcept {
    unsigned n = slots ? round_up_pow2(slots) : kDefaultSlots;
    if (n > kMaxSlots) n = kMaxSlots;
    void *mem = detail::alloc_aligned(sizeof(std::atomic<uint64_t>) * n, 64);
    if (!mem) return false;
    slots_ = static_cast<std::atomic<uint64_t> *>(mem);
    for (unsigned i = 0; i < n; ++i) new (&slots_[i]) std::atomic<uint64_t>(0);
    mask_ = n - 1;
    return true;
}

void Table::destroy() noexcept {
    detail::dealloc(slots_);
    detail::dealloc(chains_.load(std::memory_order_acquire));
    slots_ = nullptr;
}

Flight **Table::chain_of(uint64_t ident) noexcept {
    Flight **chains = chains_.load(std::memory_order_acquire);
    if (!chains) {
        auto *fresh = static_cast<Flight **>(detail::alloc(sizeof(Flight *) * (mask_ + 1)));
        if (!fresh) return nullptr;
        std::memset(fresh, 0, sizeof(Flight *) * (mask_ + 1));
        if (!chains_.compare_exchange_strong(chains, fresh, std::memory_order_acq_rel)) {
            detail::dealloc(fresh);  // another slot's lock holder installed them
        } else {
            chains = fresh;
        }
    }
    return &chains[ident & mask_];
}

// ---------------------------------------------------------------------------
// acquire: publish or join
//
// Pinning.  A flight found in a slot may complete and be recycled at any
// moment, so its key can be read only once it is pinned: by a join (the
// leader cannot fold and free it while a joiner's reference sits in the
// slot), or by holding the home's chain lock while the slot's overflow bit
// is set (every unpublish of such a slot, and of any chain flight, takes
// that lock).  The fast path joins, then checks the key; the locked path
// checks the key, then joins, so it never joins the wrong flight.
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
        if (deadlock_check && leader_serial(f) == detail::thread_serial())
            break;  // probably our own flight: decide precisely under the lock
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

// Joins the pinned flight f through its slot word: kFollower (*out = f),
// or kInvalid when f left the slot meanwhile.
Status Table::join_pinned(std::atomic<uint64_t> *slot, Flight *f, Flight **out) noexcept {
    const uint64_t enc = C::encode(f);
    uint64_t w = slot->load(std::memory_order_acquire);
    while (C::names(w, enc)) {
        if (C::joiners(w) == C::kMaxJoiners) {
            // The count is full: join the flight itself, as if folded.  It
            // is pinned (we hold the lock), so it cannot complete meanwhile.
            f->refs.fetch_add(1, std::memory_order_relaxed);
            f->interest.fetch_add(1, std::memory_order_seq_cst);
            f->state.fetch_or(kShared, std::memory_order_release);
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

// The rare path, under the home slot's chain lock, with the slot's
// overflow bit set so that every flight looked at here stays pinned: the
// home holds another key's flight, the slot has an overflow chain, the
// joiner count is full, the leader may be this thread, or two keys share an
// ident.
Status Table::acquire_locked(Group *g, FlightMode mode, Key key, uint64_t ident,
                             bool deadlock_check, Flight *fresh, Flight **out) noexcept {
    std::atomic<uint64_t> *s = home(ident);
    std::lock_guard<detail::SpinLock> lock(lock_of(ident));
    uint64_t w = s->fetch_or(C::kOverflow, std::memory_order_acq_rel) | C::kOverflow;
    Status rc = kInvalid;
    Flight **chain = nullptr;

    // The key's flight, in the home slot or in the chain.
    Flight *found = nullptr;
    std::atomic<uint64_t> *found_slot = nullptr;
    if (Flight *f = C::flight(w)) {
        if (f->ident.load(std::memory_order_relaxed) == ident && flight_key_equals(f, key))
            found = f, found_slot = s;
    }
    if (!found) {
        chain = chain_of(ident);
        if (!chain) rc = kNoMemory;
        for (Flight *f = chain ? *chain : nullptr; f && !found;
             f = f->ext.load(std::memory_order_relaxed)->chain_next) {
            if (f->ident.load(std::memory_order_relaxed) == ident && flight_key_equals(f, key))
                found = f, found_slot = &f->ext.load(std::memory_order_relaxed)->chain_word;
        }
    }
    if (found) {
        if (deadlock_check && f_led_here(found)) {
            rc = kDeadlock;
        } else {
            rc = join_pinned(found_slot, found, out);  // kInvalid: it just left
        }
    }

    // Not in flight: publish in the home slot if it is free, else in the
    // chain.
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
            if (!chain) chain = chain_of(ident);
            Ext *e = chain ? flight_ext(fresh) : nullptr;
            if (!e) {
                rc = kNoMemory;
            } else {
                fresh->flags = uint8_t(fresh->flags | kInChain);
                e->chain_next = *chain;
                e->chain_word.store(C::encode(fresh), std::memory_order_release);
                *chain = fresh;
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

// Caller holds the home's lock.  Without a chain, the fast paths may serve
// the home again.
void Table::clear_overflow_if_empty(uint64_t ident) noexcept {
    Flight **chains = chains_.load(std::memory_order_acquire);
    if (chains && chains[ident & mask_]) return;
    home(ident)->fetch_and(~C::kOverflow, std::memory_order_acq_rel);
}

// ---------------------------------------------------------------------------
// leaving the table
// ---------------------------------------------------------------------------

// Caller holds the home's lock.
void Table::unlink_chain_locked(Flight *f) noexcept {
    const uint64_t ident = f->ident.load(std::memory_order_relaxed);
    Flight **pp = chain_of(ident);  // exists: f is in it
    for (; *pp; pp = &(*pp)->ext.load(std::memory_order_relaxed)->chain_next) {
        if (*pp == f) {
            *pp = f->ext.load(std::memory_order_relaxed)->chain_next;
            break;
        }
    }
    clear_overflow_if_empty(ident);
}

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

// Takes f's slot word from a state naming f to empty (keeping the home's
// overflow bit) when want(joiners) agrees.  -1: the slot no longer names f;
// -2: want refused.  Chain flights and overflowing homes are changed under
// the home's lock (the pinning rule above).
template <class Want>
int64_t Table::take_slot(Flight *f, Want want) noexcept {
    const uint64_t enc = C::encode(f);
    const uint64_t ident = f->ident.load(std::memory_order_relaxed);
    const bool chained = f->flags & kInChain;
    std::atomic<uint64_t> *s = chained ? &f->ext.load(std::memory_order_acquire)->chain_word
                                       : home(ident);
    if (!chained) {
        uint64_t w = s->load(std::memory_order_seq_cst);
        while (!(w & C::kOverflow)) {
            if (!C::names(w, enc)) return -1;
            if (!want(C::joiners(w))) return -2;
            if (empty_slot(s, w, 0, f)) return C::joiners(w);
        }
    }
    std::lock_guard<detail::SpinLock> lock(lock_of(ident));
    uint64_t w = s->load(std::memory_order_seq_cst);
    for (;;) {
        if (!C::names(w, enc)) return -1;
        if (!want(C::joiners(w))) return -2;
        if (empty_slot(s, w, w & C::kOverflow, f)) break;
    }
    if (chained) unlink_chain_locked(f);
    return C::joiners(w);
}

int64_t Table::unpublish(Flight *f) noexcept {
    int64_t j = take_slot(f, [](uint32_t) { return true; });
    return j;
}

bool Table::unpublish_if_unjoined(Flight *f) noexcept {
    return take_slot(f, [](uint32_t joiners) { return joiners == 0; }) == 0;
}

bool Table::holds(Flight *f) noexcept {
    const bool chained = f->flags & kInChain;
    std::atomic<uint64_t> *s = chained ? &f->ext.load(std::memory_order_acquire)->chain_word
                                       : home(f->ident.load(std::memory_order_relaxed));
    return C::names(s->load(std::memory_order_seq_cst), C::encode(f));
}

bool Table::unjoin(Flight *f) noexcept {
    const bool chained = f->flags & kInChain;
    std::atomic<uint64_t> *s = chained ? &f->ext.load(std::memory_order_acquire)->chain_word
                                       : home(f->ident.load(std::memory_order_relaxed));
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
    std::lock_guard<detail::SpinLock> lock(lock_of(ident));
    // Pin whatever the home holds (see acquire), then look.
    uint64_t w = h->fetch_or(C::kOverflow, std::memory_order_acq_rel) | C::kOverflow;
    Flight *f = nullptr;
    std::atomic<uint64_t> *s = nullptr;
    if (Flight *cand = C::flight(w)) {
        if (cand->ident.load(std::memory_order_relaxed) == ident && flight_key_equals(cand, key))
            f = cand, s = h;
    }
    Flight **chains = chains_.load(std::memory_order_acquire);
    for (Flight *c = chains && !f ? chains[ident & mask_] : nullptr; c && !f;
         c = c->ext.load(std::memory_order_relaxed)->chain_next) {
        if (c->ident.load(std::memory_order_relaxed) == ident && flight_key_equals(c, key))
            f = c, s = &c->ext.load(std::memory_order_relaxed)->chain_word;
    }
    int rc = 0;
    if (f) {
        const uint64_t enc = C::encode(f);
        w = s->load(std::memory_order_seq_cst);
        while (C::names(w, enc)) {
            const uint32_t joiners = C::joiners(w);
            if (only_unshared &&
                (joiners > 0 || (f->state.load(std::memory_order_acquire) & kShared)))
                break;
            if (empty_slot(s, w, w & C::kOverflow, f)) {
                if (f->flags & kInChain) unlink_chain_locked(f);
                flight_fold(f, joiners, true);
                rc = 1;
                break;
            }
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
    if (Flight **chains = chains_.load(std::memory_order_relaxed)) {
        for (uint64_t i = 0; i <= mask_; ++i) {
            for (Flight *f = chains[i]; f; f = f->ext.load(std::memory_order_relaxed)->chain_next) {
                std::atomic<uint64_t> &cw = f->ext.load(std::memory_order_relaxed)->chain_word;
                orphan(f, cw.load(std::memory_order_relaxed));
                cw.store(0, std::memory_order_relaxed);
            }
            chains[i] = nullptr;
        }
    }
    for (detail::SpinLock &l : locks_) l.reset();
}

}  // namespace sf
