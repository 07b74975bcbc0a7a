// Recycles fixed-size blocks (flights, call handles) so that steady-state
// calls make no heap allocation.  Each thread keeps a small stack of blocks;
// when it runs dry or overflows it trades a batch with one process-wide list,
// which balances producer/consumer patterns (the leader's thread allocates,
// a follower's thread frees the last reference).
#pragma once

#include <cstddef>

namespace sf {
namespace detail {

class BlockCache {
public:
    // constexpr: the two caches are constant-initialised, never written
    // during start-up (a dlopen on one thread, use on another).
    constexpr BlockCache(std::size_t block_size, int index) noexcept
        : index_(index), size_(block_size) {}
    BlockCache(const BlockCache &) = delete;
    BlockCache &operator=(const BlockCache &) = delete;

    void *get() noexcept;          // nullptr when out of memory
    void put(void *block) noexcept;

    // Frees every block held process-wide and by the calling thread.
    // Used at exit so leak checkers see a clean heap.
    void drain() noexcept;
    // Frees the process-wide list and the calling thread's blocks, leaving
    // the cache usable (testing::reset_caches).
    void reset() noexcept;

    std::size_t block_size() const noexcept { return size_; }

    // Internal: the per-thread cache and the shared list.
    struct Node { Node *next; };
    Node *global_ = nullptr;
    std::size_t global_count_ = 0;
    bool closed_ = false;          // after drain at exit: free directly
    const int index_;              // slot in the thread-local table

private:
    std::size_t size_;
};

// The two caches the core uses.
BlockCache &flight_cache() noexcept;
BlockCache &call_cache() noexcept;

}  // namespace detail
}  // namespace sf
