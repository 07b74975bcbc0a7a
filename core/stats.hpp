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
    kHandles,    // two-phase handles opened minus released (wraps below zero per stripe)
    kAbandons,   // flights abandoned by every interested party (SF_1.1)
    kCancels,    // callers that gave up (SF_1.1)
    kCounters
};

class Stats {
public:
    void add(Counter c, uint64_t n = 1) noexcept {
        uint32_t s = detail::t_state.stripe;
        if (__builtin_expect(s == 0, 0)) s = detail::claim_stripe();
        // Release (a plain store on x86): see read().
        if (__builtin_expect(s != detail::kSharedStripe, 1)) {
            std::atomic<uint64_t> &v = stripes_[s].v[c];
            v.store(v.load(std::memory_order_relaxed) + n, std::memory_order_release);
        } else {
            stripes_[0].v[c].fetch_add(n, std::memory_order_acq_rel);
        }
    }
    void sub(Counter c, uint64_t n = 1) noexcept { add(c, uint64_t(0) - n); }

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
    Stripe stripes_[detail::kStripes] = {};
};

}  // namespace sf
