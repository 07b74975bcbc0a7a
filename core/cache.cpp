#include "core/cache.hpp"

#include <cstddef>
#include <cstring>
#include <mutex>

#include "core/alloc.hpp"
#include "core/flight.hpp"
#include "core/platform.hpp"
#include "core/testing.hpp"
#include "core/thread.hpp"

namespace sf {
namespace detail {

BlockCache g_flights(sizeof(Flight), alignof(Flight), 0);
BlockCache g_calls(sizeof(Follower), alignof(Follower), 1);
BlockCache g_exts(sizeof(Ext), alignof(Ext), 2);

namespace {
constexpr int kBatch = BlockCache::kLocalMax / 2;  // blocks traded with the shared list

// One mutex for every shared list: they are touched once per kBatch calls.
// Held across fork() (caches_fork_*), so the child never inherits a list
// mid-update.
std::mutex g_mu;

BlockCache *const g_caches[kCaches] = {&g_flights, &g_calls, &g_exts};

struct FlushAtExit {
    FlushAtExit() noexcept { at_thread_exit(flush_thread_caches); }
} g_flush_at_exit;

void push(FreeBlock *&list, void *block) noexcept {
    auto *n = static_cast<FreeBlock *>(block);
    n->next = list;
    list = n;
}
}  // namespace

#if defined(SF_ASAN)
// A cached block is poisoned, so a use after the last release is reported
// although the memory is never freed.  Two windows stay readable: the free
// list's link (the first word) and, in a flight, what a thread that found it
// in a slot reads before it joins (ident and leader_thread: speculative by
// design).
extern "C" void __asan_poison_memory_region(void const volatile *addr, size_t size);
extern "C" void __asan_unpoison_memory_region(void const volatile *addr, size_t size);
void BlockCache::poison(void *block) noexcept {
    auto *p = static_cast<char *>(block);
    if (index_ == 0) {
        __asan_poison_memory_region(p + 16, offsetof(Flight, leader_thread) - 16);
        __asan_poison_memory_region(p + offsetof(Flight, ext), size_ - offsetof(Flight, ext));
    } else {
        __asan_poison_memory_region(p + sizeof(void *), size_ - sizeof(void *));
    }
}
void BlockCache::unpoison(void *block) noexcept { __asan_unpoison_memory_region(block, size_); }
#endif

void *BlockCache::get_slow() noexcept {
    ThreadState &t = t_state;
    if (t.life == kNew) register_thread();
    if (t.life == kDead) {
        std::lock_guard<std::mutex> lock(g_mu);
        if (Node *n = global_) {
            global_ = n->next;
            unpoison(n);
            return n;
        }
    } else {
        LocalStack &s = t.stacks[index_];
        {
            std::lock_guard<std::mutex> lock(g_mu);
            for (int i = 0; i < kBatch && global_; ++i) {
                Node *n = global_;
                global_ = n->next;
                push(s.top, n);
                ++s.count;
            }
        }
        if (FreeBlock *top = s.top) {
            s.top = top->next;
            --s.count;
            unpoison(top);
            return top;
        }
    }
    // A new block starts zeroed: the null fields a recycled flight keeps
    // (notify_head, ext; see flight_new) and a tag of 0.
    void *fresh = raw_alloc_aligned(size_, align_);
    if (fresh) std::memset(fresh, 0, size_);
    return fresh;
}

void BlockCache::put_slow(void *block) noexcept {
    poison(block);
    ThreadState &t = t_state;
    if (t.life == kNew) register_thread();
    std::lock_guard<std::mutex> lock(g_mu);
    if (t.life == kDead) {
        push(global_, block);
        return;
    }
    // The local stack is full: keep this block, give back a batch.
    LocalStack &s = t.stacks[index_];
    push(s.top, block);
    ++s.count;
    for (int i = 0; i < kBatch && s.top; ++i) {
        FreeBlock *m = s.top;
        s.top = m->next;
        --s.count;
        push(global_, m);
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

}  // namespace detail

#if defined(SF_TESTING_HOOKS)
namespace testing {
void reset_caches() noexcept { detail::flush_thread_caches(); }
}  // namespace testing
#endif
}  // namespace sf
