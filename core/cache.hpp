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

#include "core/alloc.hpp"
#include "core/platform.hpp"
#include "core/thread.hpp"

namespace sf {
namespace detail {

class BlockCache {
public:
    static constexpr int kLocalMax =
        16;  // blocks a thread keeps (few: a hoarding follower starves leaders)

    // constexpr: the caches are constant-initialised, never written during
    // start-up (a dlopen on one thread, use on another).
    constexpr BlockCache(std::size_t block_size, std::size_t align, int index) noexcept
        : index_(index), size_(block_size), align_(align) {}
    BlockCache(const BlockCache &) = delete;
    BlockCache &operator=(const BlockCache &) = delete;

    std::size_t block_size() const noexcept { return size_; }

    // Internal: the shared list, guarded by one process-wide mutex.
    using Node = FreeBlock;
    Node *global_ = nullptr;
    const int index_;  // slot in ThreadState::stacks

    // The shared paths behind CacheAt's inline ones.
    void *get_slow() noexcept;
    void put_slow(void *block) noexcept;
    // Under AddressSanitizer a cached block is poisoned (cache.cpp).
#if defined(SF_ASAN)
    void poison(void *block) noexcept;
    void unpoison(void *block) noexcept;
#else
    void poison(void *) noexcept {}
    void unpoison(void *) noexcept {}
#endif
private:
    std::size_t size_, align_;
};

// One of the caches, with its index known at compile time: the thread's own
// stack first, a few instructions, inline.
template <int I>
struct CacheAt {
    BlockCache &cache;

    // nullptr when out of memory or when a test injects a failure (a block
    // from the cache counts as an allocation for that: see alloc.hpp).
    __attribute__((always_inline)) void *get() const noexcept {
        if (cache_request_fails()) return nullptr;
        LocalStack &s = t_state.stacks[I];  // non-empty only while the thread is active
        if (FreeBlock *top = s.top) {
            s.top = top->next;
            --s.count;
            cache.unpoison(top);
            return top;
        }
        return cache.get_slow();
    }
    __attribute__((always_inline)) void put(void *block) const noexcept {
        ThreadState &t = t_state;
        LocalStack &s = t.stacks[I];
        if (__builtin_expect(t.life == kActive && s.count < BlockCache::kLocalMax, 1)) {
            cache.poison(block);
            auto *n = static_cast<FreeBlock *>(block);
            n->next = s.top;
            s.top = n;
            ++s.count;
            return;
        }
        cache.put_slow(block);
    }
};

extern BlockCache g_flights, g_calls, g_exts;
inline CacheAt<0> flight_cache() noexcept { return {g_flights}; }
inline CacheAt<1> call_cache() noexcept { return {g_calls}; }
inline CacheAt<2> ext_cache() noexcept { return {g_exts}; }

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
