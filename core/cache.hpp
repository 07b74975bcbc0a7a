// Recycles fixed-size blocks (flights, follower calls, flight extensions) so
// that steady-state calls make no heap allocation.  Each thread keeps a small
// stack of blocks; when it runs dry or overflows it trades a batch with one
// process-wide list, which balances producer/consumer patterns (the leader's
// thread allocates, a follower's thread frees the last reference).
//
// Blocks are never returned to the allocator while the process runs: a
// flight may be read speculatively (relaxed atomics, checked afterwards) by
// a thread that found it in the table just before it was recycled, so its
// memory must always be a flight.
#pragma once

#include <cstddef>

#include "core/thread.hpp"

namespace sf {
namespace detail {

class BlockCache {
public:
    // constexpr: the caches are constant-initialised, never written during
    // start-up (a dlopen on one thread, use on another).
    constexpr BlockCache(std::size_t block_size, std::size_t align, int index) noexcept
        : index_(index), size_(block_size), align_(align) {}
    BlockCache(const BlockCache &) = delete;
    BlockCache &operator=(const BlockCache &) = delete;

    // nullptr when out of memory or when a test injects a failure (a block
    // from the cache counts as an allocation for that: see alloc.hpp).
    void *get() noexcept;
    void put(void *block) noexcept;

    std::size_t block_size() const noexcept { return size_; }

    // Internal: the shared list, guarded by one process-wide mutex.
    using Node = FreeBlock;
    Node *global_ = nullptr;
    const int index_;  // slot in ThreadState::stacks

private:
    void *take() noexcept;
    void give(void *block) noexcept;
    std::size_t size_, align_;
};

BlockCache &flight_cache() noexcept;
BlockCache &call_cache() noexcept;
BlockCache &ext_cache() noexcept;

// Moves the calling thread's cached blocks to the shared lists (thread exit,
// testing::reset_caches).
void flush_thread_caches() noexcept;

// The shared lists' lock is held across fork(), so the child never inherits
// a list mid-update.  Called from the library's one fork handler (group.cpp),
// which takes its locks in one fixed order.
void caches_fork_prepare() noexcept;
void caches_fork_parent() noexcept;
void caches_fork_child() noexcept;

}  // namespace detail
}  // namespace sf
