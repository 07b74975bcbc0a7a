#include "core/cache.hpp"

#include <cstddef>
#include <mutex>

#include "core/alloc.hpp"
#include "core/platform.hpp"
#include "core/flight.hpp"
#include "core/testing.hpp"
#include "core/thread.hpp"

namespace sf {
namespace detail {

namespace {
// Under AddressSanitizer a cached block is poisoned, so a use after the last
// release is reported although the memory is never freed.  Two windows
// stay readable: the free list's link (the first word) and, in a flight,
// what a thread that found it in a slot reads before it joins (ident and
// leader_thread: speculative by design).
#if defined(SF_ASAN)
extern "C" void __asan_poison_memory_region(void const volatile *addr, size_t size);
extern "C" void __asan_unpoison_memory_region(void const volatile *addr, size_t size);
void poison(BlockCache &c, void *block) noexcept {
    auto *p = static_cast<char *>(block);
    const size_t n = c.block_size();
    if (n == sizeof(Flight)) {
        __asan_poison_memory_region(p + 16, offsetof(Flight, leader_thread) - 16);
        __asan_poison_memory_region(p + offsetof(Flight, ext), n - offsetof(Flight, ext));
    } else {
        __asan_poison_memory_region(p + sizeof(void *), n - sizeof(void *));
    }
}
void unpoison(BlockCache &c, void *block) noexcept {
    __asan_unpoison_memory_region(block, c.block_size());
}
#else
void poison(BlockCache &, void *) noexcept {}
void unpoison(BlockCache &, void *) noexcept {}
#endif

constexpr int kLocalMax = 16;          // blocks a thread keeps (few: a hoarding follower starves leaders)
constexpr int kBatch = kLocalMax / 2;  // blocks traded with the shared list

// One mutex for every shared list: they are touched once per kBatch calls.
// Held across fork() so the child never inherits a list mid-update.
std::mutex g_mu;

BlockCache g_flights(sizeof(Flight), alignof(Flight), 0);
BlockCache g_calls(sizeof(Follower), alignof(Follower), 1);
BlockCache g_exts(sizeof(Ext), alignof(Ext), 2);
BlockCache *const g_caches[kCaches] = {&g_flights, &g_calls, &g_exts};


// The calling thread's stack for cache index i, or nullptr once the thread
// has flushed at exit.
LocalStack *local_stack(int i) noexcept {
    ThreadState &t = t_state;
    if (__builtin_expect(!t.registered, 0)) register_thread();
    return t.dead ? nullptr : &t.stacks[i];
}

void push(FreeBlock *&list, void *block) noexcept {
    auto *n = static_cast<FreeBlock *>(block);
    n->next = list;
    list = n;
}
}  // namespace

void *BlockCache::get() noexcept {
    void *b = take();
    if (b) unpoison(*this, b);
    return b;
}

void BlockCache::put(void *block) noexcept {
    poison(*this, block);
    give(block);
}

void *BlockCache::take() noexcept {
    if (injected_failure()) return nullptr;
    LocalStack *s = local_stack(index_);
    if (!s) {
        std::lock_guard<std::mutex> lock(g_mu);
        if (Node *n = global_) {
            global_ = n->next;
            return n;
        }
    } else {
        if (!s->top) {
            std::lock_guard<std::mutex> lock(g_mu);
            for (int i = 0; i < kBatch && global_; ++i) {
                Node *n = global_;
                global_ = n->next;
                push(s->top, n);
                ++s->count;
            }
        }
        if (FreeBlock *top = s->top) {
            s->top = top->next;
            --s->count;
            return top;
        }
    }
    return raw_alloc_aligned(size_, align_);
}

void BlockCache::give(void *block) noexcept {
    LocalStack *s = local_stack(index_);
    if (!s) {
        std::lock_guard<std::mutex> lock(g_mu);
        push(global_, block);
        return;
    }
    push(s->top, block);
    if (++s->count > kLocalMax) {
        std::lock_guard<std::mutex> lock(g_mu);
        for (int i = 0; i < kBatch; ++i) {
            FreeBlock *m = s->top;
            s->top = m->next;
            --s->count;
            push(global_, m);
        }
    }
}

void flush_thread_caches() noexcept {
    ThreadState &t = t_state;
    std::lock_guard<std::mutex> lock(g_mu);
    for (int i = 0; i < kCaches; ++i) {
        while (FreeBlock *top = t.stacks[i].top) {
            t.stacks[i].top = top->next;
            push(g_caches[i]->global_, top);
        }
        t.stacks[i].count = 0;
    }
}

void caches_fork_prepare() noexcept { g_mu.lock(); }
void caches_fork_parent() noexcept { g_mu.unlock(); }
void caches_fork_child() noexcept { g_mu.unlock(); }

BlockCache &flight_cache() noexcept { return g_flights; }
BlockCache &call_cache() noexcept { return g_calls; }
BlockCache &ext_cache() noexcept { return g_exts; }

}  // namespace detail

namespace testing {
void reset_caches() noexcept { detail::flush_thread_caches(); }
}  // namespace testing
}  // namespace sf
