// The shard lock.  Critical sections under it are a hash-chain walk and a
// few counter updates, never user code, so a test-and-set lock beats a
// pthread mutex: one atomic exchange to take it, a plain store to give it
// back.  Waiters spin briefly, then yield so that an oversubscribed machine
// (more threads than cores) still lets a preempted holder run.
#pragma once

#include <atomic>
#include <cstdint>

#include "core/platform.hpp"

namespace sf {
namespace detail {

class SpinLock {
public:
    void lock() noexcept {
        if (!word_.exchange(1, std::memory_order_acquire)) return;
        lock_slow();
    }
    void unlock() noexcept { word_.store(0, std::memory_order_release); }

    // Only in a forked child, where the holder may not exist.
    void reset() noexcept { word_.store(0, std::memory_order_relaxed); }

private:
    void lock_slow() noexcept {
        for (unsigned spins = 0;;) {
            while (word_.load(std::memory_order_relaxed)) {
                if (++spins < 100) {
                    cpu_relax();
                } else {
                    yield_cpu();
                }
            }
            if (!word_.exchange(1, std::memory_order_acquire)) return;
        }
    }

    std::atomic<uint32_t> word_{0};
};

}  // namespace detail
}  // namespace sf
