// A group's counters, striped by thread: each thread that counts owns one
// stripe (core/thread.hpp) and is its only writer, so counting is a plain
// load and store of a relaxed atomic, never a locked instruction and never
// a cache line shared with another thread.  Threads beyond the stripes
// share stripe 0 with atomic adds.  A read sums every stripe.
#pragma once

#include <atomic>
#include <cstdint>

#include "core/thread.hpp"
#include "core/types.hpp"

namespace sf {

enum Counter : unsigned {
    kLeaders,    // flights started (by calls that were not refused)
    kFollowers,  // calls that joined a flight
    kCompleted,  // counted flights completed (in flight = leaders - completed)
    kPanics,
    kGoexits,
    kTimeouts,
    kForgets,
    kHandles,   // two-phase handles opened minus released (wraps below zero per stripe)
    kAbandons,  // flights abandoned by every interested party (SF_1.1)
    kCancels,   // callers that gave up (SF_1.1)
    kCounters
};

class Stats {
public:
    __attribute__((always_inline)) void add(Counter c, uint64_t n = 1) noexcept {
        // The thread's own stripe, by its byte offset (0: none yet, or none
        // to be had).  Release, a plain store on x86: see read().
        const uint32_t off = detail::t_state.stripe_off;
        if (__builtin_expect(off != 0, 1)) {
            auto &v = reinterpret_cast<Stripe *>(reinterpret_cast<char *>(stripes_) + off)->v[c];
            v.store(v.load(std::memory_order_relaxed) + n, std::memory_order_release);
            return;
        }
        add_slow(c, n);
    }
    void sub(Counter c, uint64_t n = 1) noexcept { add(c, uint64_t(0) - n); }

    // The calling thread's own stripe, to count several times in one call
    // without looking it up again: nullptr when the thread shares stripe 0.
    // A thread keeps its stripe until it exits, so the pointer stays valid
    // across user code (fn) run in between.
    struct Mine {
        std::atomic<uint64_t> *v;  // nullptr: shared
    };
    __attribute__((always_inline)) Mine mine() noexcept {
        if (__builtin_expect(detail::t_state.stripe_off == 0, 0)) {
            if (detail::t_state.stripe == 0) detail::claim_stripe();
            if (detail::t_state.stripe_off == 0) return Mine{nullptr};
        }
        return Mine{reinterpret_cast<Stripe *>(reinterpret_cast<char *>(stripes_) +
                                               detail::t_state.stripe_off)
                        ->v};
    }
    __attribute__((always_inline)) void add(Mine m, Counter c, uint64_t n = 1) noexcept {
        if (__builtin_expect(m.v != nullptr, 1)) {
            m.v[c].store(m.v[c].load(std::memory_order_relaxed) + n, std::memory_order_release);
        } else {
            stripes_[0].v[c].fetch_add(n, std::memory_order_acq_rel);
        }
    }

    // Sums every stripe.  Exact when no call runs concurrently; otherwise
    // each counter is a value it had during the read, and the counters of
    // completions (completed, panics, goexits) are read first, with
    // acquire: every start counted before a completion that was seen is
    // seen too, so in flight (leaders - completed) is never negative.
    Counts read() const noexcept {
        uint64_t sum[kCounters] = {};
        static constexpr unsigned kFirst[] = {kCompleted, kPanics, kGoexits};
        for (const Stripe &st : stripes_)
            for (unsigned c : kFirst) sum[c] += st.v[c].load(std::memory_order_acquire);
        for (const Stripe &st : stripes_)
            for (unsigned c = 0; c < kCounters; ++c)
                if (c != kCompleted && c != kPanics && c != kGoexits)
                    sum[c] += st.v[c].load(std::memory_order_relaxed);
        Counts out;
        out.leaders = sum[kLeaders];
        out.followers = sum[kFollowers];
        out.completed = sum[kCompleted];
        out.panics = sum[kPanics];
        out.goexits = sum[kGoexits];
        out.timeouts = sum[kTimeouts];
        out.forgets = sum[kForgets];
        out.handles = sum[kHandles];
        out.abandons = sum[kAbandons];
        out.cancels = sum[kCancels];
        return out;
    }

private:
    struct alignas(64) Stripe {
        std::atomic<uint64_t> v[kCounters];
    };
    static_assert(sizeof(Stripe) == detail::kStripeBytes, "thread.hpp computes offsets");

    void add_slow(Counter c, uint64_t n) noexcept {
        if (detail::t_state.stripe == 0) detail::claim_stripe();
        if (detail::t_state.stripe_off != 0) return add(c, n);
        stripes_[0].v[c].fetch_add(n, std::memory_order_acq_rel);  // shared
    }

    Stripe stripes_[detail::kStripes] = {};
};

}  // namespace sf
